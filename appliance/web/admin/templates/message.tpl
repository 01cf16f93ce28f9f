% rebase("base.tpl", title=title)
<h1>{{title}}</h1>
<p class="message">{{message}}</p>

% rebase("base.tpl", title=title)
<section class="card narrow">
<h1>Log in</h1>
% if error:
<p class="flash error" id="login-error">{{error}}</p>
% end
<form method="post" action="/login">
  <input type="hidden" name="csrf_token" value="{{pre_csrf}}">
  <input type="hidden" name="next" value="{{next}}">
  <label>User name <input name="username" id="username" value="{{name}}" autocomplete="username" required autofocus></label>
  <label>Password <input type="password" name="password" id="password" autocomplete="current-password" required></label>
  <button type="submit" id="login">Log in</button>
</form>
</section>

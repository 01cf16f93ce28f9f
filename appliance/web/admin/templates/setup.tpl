% rebase("base.tpl", title=title)
<section class="card narrow">
<h1>Set up the administrator</h1>
<p>This one-time link creates the first administrator account. There is no default password.</p>
% if error:
<p class="flash error">{{error}}</p>
% end
<form method="post" action="/setup">
  <input type="hidden" name="csrf_token" value="{{pre_csrf}}">
  <input type="hidden" name="token" value="{{token}}">
  <label>User name <input name="username" id="username" value="admin" required></label>
  <label>Password (at least 10 characters) <input type="password" name="password" id="password" minlength="10" required></label>
  <label>Password again <input type="password" name="password2" id="password2" minlength="10" required></label>
  <button type="submit" id="setup">Create the administrator</button>
</form>
</section>

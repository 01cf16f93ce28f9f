% rebase("base.tpl", title=title)
<h1>Users and API tokens</h1>
% if error:
<p class="flash error">{{error}}</p>
% end
% if secret:
<p class="flash ok">New API token (shown once, copy it now): <code id="new-token">{{secret}}</code></p>
% end
<div class="grid">
<section class="card">
  <h2>Users</h2>
  <table id="users">
    <tr><th>Name</th><th>Role</th><th>Since</th><th></th></tr>
    % for u in users:
    <tr><td>{{u.name}}</td><td>{{u.role}}</td><td>{{when(u.created)}}</td>
      <td><form method="post" action="/admin/users/{{u.name}}/delete" class="inline" data-confirm="Remove this user?"><input type="hidden" name="csrf_token" value="{{csrf}}"><button type="submit" class="danger">Remove</button></form></td></tr>
    % end
  </table>
  <form method="post" action="/admin/users" class="editor" id="user-form">
    <h3>Add a user, or set a new password or role</h3>
    <input type="hidden" name="csrf_token" value="{{csrf}}">
    <label>User name <input name="username" id="u-name" required></label>
    <label>Role <select name="role" id="u-role">
      % for r in roles:
      <option>{{r}}</option>
      % end
    </select></label>
    <label>Password (at least 10 characters) <input type="password" name="password" id="u-password" minlength="10" required></label>
    <button type="submit" id="u-save">Save user</button>
  </form>
</section>
<section class="card">
  <h2>API tokens</h2>
  <p class="small">For the REST API: <code>Authorization: Bearer TOKEN</code>. A token has its user's role.</p>
  <table id="tokens">
    <tr><th>ID</th><th>User</th><th>Label</th><th>Created</th><th></th></tr>
    % for t in tokens:
    <tr><td>{{t["id"]}}</td><td>{{t["user"]}}</td><td>{{t["label"]}}</td><td>{{when(t["created"])}}</td>
      <td><form method="post" action="/admin/tokens/{{t['id']}}/delete" class="inline"><input type="hidden" name="csrf_token" value="{{csrf}}"><button type="submit" class="danger">Revoke</button></form></td></tr>
    % end
  </table>
  <form method="post" action="/admin/tokens" class="inline">
    <input type="hidden" name="csrf_token" value="{{csrf}}">
    <select name="username">
      % for u in users:
      <option>{{u.name}}</option>
      % end
    </select>
    <input name="label" placeholder="label (what uses it)">
    <button type="submit">Create a token</button>
  </form>
</section>
</div>

<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{{csrf}}">
<title>{{title}} · DICOM appliance</title>
<link rel="stylesheet" href="/static/admin.css">
<script src="/static/admin.js" defer></script>
</head>
<body>
<header class="top">
  <a class="brand" href="/admin/">DICOM appliance</a>
  % if user:
  <nav>
    % items = [("/admin/", "Dashboard"), ("/admin/browse", "Browse"), ("/admin/queue", "Queue")]
    % if is_admin:
    %   items += [("/admin/upload", "Upload"), ("/admin/modalities", "Modalities"), ("/admin/routes", "Routes"), ("/admin/settings", "Settings"), ("/admin/users", "Users"), ("/admin/audit", "Audit")]
    % end
    % for href, label in items:
    <a href="{{href}}" class="{{'active' if path == href else ''}}">{{label}}</a>
    % end
  </nav>
  <form method="post" action="/logout" class="logout">
    <input type="hidden" name="csrf_token" value="{{csrf}}">
    <span class="who">{{user}}</span> <button type="submit" id="logout">Log out</button>
  </form>
  % end
</header>
<main>
% from bottle import request
% msg = request.query.getunicode("msg") or ""
% err = request.query.getunicode("err") or ""
% if msg:
<p class="flash ok">{{msg}}</p>
% end
% if err:
<p class="flash error">{{err}}</p>
% end
{{!base}}
</main>
</body>
</html>

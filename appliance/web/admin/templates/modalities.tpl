% rebase("base.tpl", title=title)
<h1>Modalities</h1>
% if error:
<p class="flash error" id="modality-error">{{error}}</p>
% end
% if echo:
<p class="flash {{'ok' if echo.endswith('success') else 'error'}}" id="echo-result">{{echo}}</p>
% end
<table id="modalities">
  <tr><th>Name</th><th>AE title</th><th>Host</th><th>Port</th><th>Allowed</th><th></th></tr>
  % for name, m in sorted(modalities.items()):
  <tr><td>{{name}}</td><td>{{m.aet}}</td><td>{{m.host}}</td><td>{{m.port}}</td><td>{{", ".join(m.allow)}}</td>
    <td><a href="/admin/modalities?edit={{name}}">Edit</a>
      <form method="post" action="/admin/modalities/{{name}}/delete" class="inline" data-confirm="Delete this modality?"><input type="hidden" name="csrf_token" value="{{csrf}}"><button type="submit" class="danger">Delete</button></form></td></tr>
  % end
</table>
% e = edit or {}
<form method="post" action="/admin/modalities" class="card editor" id="modality-form">
  <h2>{{"Edit " + e["name"] if e.get("name") else "Add a modality"}}</h2>
  <input type="hidden" name="csrf_token" value="{{csrf}}">
  <label>Name <input name="name" id="m-name" value="{{e.get('name', '')}}" required></label>
  <label>AE title <input name="aet" id="m-aet" value="{{e.get('aet', '')}}" required maxlength="16"></label>
  <label>Host <input name="host" id="m-host" value="{{e.get('host', '')}}" required></label>
  <label>Port <input name="port" id="m-port" value="{{e.get('port', 104)}}" required></label>
  <label>Concurrency <input name="concurrency" id="m-concurrency" value="{{e.get('concurrency', 1)}}"></label>
  <fieldset><legend>May ask us for</legend>
  % for p in permissions:
    <label class="check"><input type="checkbox" name="allow" value="{{p}}" {{'checked' if p in e.get('allow', permissions) else ''}}> {{p}}</label>
  % end
  </fieldset>
  <label class="check"><input type="checkbox" name="force" id="m-force"> save even if the C-ECHO fails</label>
  <button type="submit" name="action" value="test" id="m-test">Test (C-ECHO)</button>
  <button type="submit" name="action" value="save" id="m-save">Test and save</button>
</form>

% rebase("base.tpl", title=title)
<h1>Settings</h1>
% if error:
<p class="flash error" id="settings-error">{{error}}</p>
% end
<form method="post" action="/admin/settings" class="card settings" id="settings-form">
  <input type="hidden" name="csrf_token" value="{{csrf}}">
  % for f in fields:
  <div class="field">
    <label for="{{f.key}}">{{f.key}}{{" (needs a restart)" if f.key in restart else ""}}</label>
    % if f.kind is bool:
    <input type="checkbox" id="{{f.key}}" name="{{f.key}}" {{'checked' if f.value else ''}}>
    % else:
    <input id="{{f.key}}" name="{{f.key}}" value="{{f.value}}">
    % end
    <span class="help">{{f.help}}</span>
  </div>
  % end
  <p class="small">Ports, AE title and listening address apply after a restart of the service; command-line flags win over these settings.</p>
  <button type="submit" id="save-settings">Save</button>
</form>
<div class="grid">
<section class="card">
  <h2>Saved versions</h2>
  <table id="versions">
    <tr><th>Version</th><th>Saved</th><th>By</th><th></th></tr>
    % for i, v in enumerate(history):
    <tr><td>{{v["version"]}}</td><td>{{when(v["saved"])}}</td><td>{{v["by"]}}</td>
      <td>
        % if i > 0:
        <form method="post" action="/admin/settings/rollback/{{v['version']}}" class="inline"><input type="hidden" name="csrf_token" value="{{csrf}}"><button type="submit" class="rollback" data-version="{{v['version']}}">Roll back to this</button></form>
        % else:
        current
        % end
      </td></tr>
    % end
  </table>
</section>
<section class="card">
  <h2>Export and import</h2>
  <p><a class="button" href="/admin/settings/export" id="export">Export the configuration (JSON)</a></p>
  <form method="post" action="/admin/settings/import" enctype="multipart/form-data" class="inline" data-confirm="Replace the whole configuration with this file?">
    <input type="hidden" name="csrf_token" value="{{csrf}}">
    <input type="file" name="file" accept="application/json,.json">
    <button type="submit" id="import">Import</button>
  </form>
</section>
</div>

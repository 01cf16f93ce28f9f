% rebase("base.tpl", title=title)
<h1>Routes</h1>
% if error:
<p class="flash error" id="route-error">{{error}}</p>
% end
<table id="routes">
  <tr><th>Name</th><th>Enabled</th><th>Trigger</th><th>Destinations</th><th>Conditions</th><th></th></tr>
  % for name, r in sorted(routes.items()):
  <tr class="{{'' if r.enabled else 'disabled'}}"><td>{{name}}</td><td>{{"yes" if r.enabled else "no"}}</td><td>{{r.trigger}}</td><td>{{", ".join(r.destinations)}}</td>
    <td class="small">
      % for key in ("calling_aet", "called_aet", "modality", "sop_class"):
      %   if getattr(r, key):
      {{key}} = {{", ".join(getattr(r, key))}};
      %   end
      % end
      % for k, v in r.tags.items():
      {{k}} = {{", ".join(v)}};
      % end
    </td>
    <td><a href="/admin/routes?edit={{name}}">Edit</a>
      <form method="post" action="/admin/routes/{{name}}/toggle" class="inline"><input type="hidden" name="csrf_token" value="{{csrf}}"><button type="submit">{{"Disable" if r.enabled else "Enable"}}</button></form>
      <form method="post" action="/admin/routes/{{name}}/delete" class="inline" data-confirm="Delete this route?"><input type="hidden" name="csrf_token" value="{{csrf}}"><button type="submit" class="danger">Delete</button></form></td></tr>
  % end
</table>
% e = edit or {}
<form method="post" action="/admin/routes" class="card editor" id="route-form">
  <h2>{{"Edit " + e["name"] if e.get("name") else "Add a route"}}</h2>
  <input type="hidden" name="csrf_token" value="{{csrf}}">
  <label>Name <input name="name" id="r-name" value="{{e.get('name', '')}}"></label>
  <fieldset><legend>Destinations</legend>
  % for m in modalities:
    <label class="check"><input type="checkbox" name="destinations" value="{{m}}" {{'checked' if m in e.get('destinations', []) else ''}}> {{m}}</label>
  % end
  % if not modalities:
    <span class="small">Add a modality first.</span>
  % end
  </fieldset>
  <label>Trigger <select name="trigger" id="r-trigger">
    % for t in ("instance", "series", "study"):
    <option {{'selected' if e.get('trigger') == t else ''}}>{{t}}</option>
    % end
  </select></label>
  <label class="check"><input type="checkbox" name="enabled" id="r-enabled" {{'checked' if e.get('enabled', True) else ''}}> enabled</label>
  <p class="small">Patterns, comma separated: exact, with * and ? wildcards, or re:regular-expression.</p>
  % for key, label in (("calling_aet", "Calling AE title"), ("called_aet", "Called AE title"), ("modality", "Modality"), ("sop_class", "SOP Class UID")):
  <label>{{label}} <input name="{{key}}" id="r-{{key}}" value="{{', '.join(e.get(key, []))}}"></label>
  % end
  <label>Other tags (one per line: Keyword=pattern, pattern)
    <textarea name="tags" id="r-tags" rows="3">{{"\n".join(k + "=" + ", ".join(v) for k, v in e.get("tags", {}).items())}}</textarea></label>
  <button type="submit" name="action" value="dry-run" id="r-dry-run">Dry run</button>
  <button type="submit" name="action" value="save" id="r-save">Save</button>
</form>
% if dry is not None:
<section class="card" id="dry-run">
  <h2>Dry run: {{len(dry)}} recent studies would have matched</h2>
  <table>
    <tr><th>Patient</th><th>Date</th><th>Description</th><th>Images matched</th></tr>
    % for st in dry:
    <tr><td><a href="/admin/studies/{{st['id']}}">{{st["patient_name"]}}</a></td><td>{{st["date"]}}</td><td>{{st["description"]}}</td><td>{{st["matched"]}}</td></tr>
    % end
  </table>
</section>
% end

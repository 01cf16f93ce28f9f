% rebase("base.tpl", title=title)
<h1>{{study["patient_name"]}} <span class="small">{{study["patient_id"]}}</span></h1>
<section class="card">
<dl class="meta">
  <dt>Study date</dt><dd>{{study["date"]}}</dd>
  <dt>Description</dt><dd>{{study["description"]}}</dd>
  <dt>Accession</dt><dd>{{study["accession"]}}</dd>
  <dt>Study UID</dt><dd class="uid">{{study["uid"]}}</dd>
  <dt>Images</dt><dd>{{study["instances"]}}</dd>
  <dt>Protected</dt><dd id="protected">{{("yes, until " + when(study["protected_until"])) if study["protected"] and study["protected_until"] else ("yes" if study["protected"] else "no")}}</dd>
</dl>
</section>
<div class="grid">
<section class="card">
  <h2>Send</h2>
  % if modalities:
  <form method="post" action="/admin/studies/{{study['id']}}/send" class="inline" id="send-form">
    <input type="hidden" name="csrf_token" value="{{csrf}}">
    <select name="destination" id="destination">
      % for m in modalities:
      <option {{'selected' if m == sent else ''}}>{{m}}</option>
      % end
    </select>
    <button type="submit" id="send">Send</button>
  </form>
  % else:
  <p class="small">No modality is configured.</p>
  % end
  % if sent:
  <div id="progress" data-url="/admin/studies/{{study['id']}}/progress?destination={{sent}}&amp;since={{since}}" data-total="{{study['instances']}}">
    <div class="gauge"><div class="fill" style="width: 0%"></div></div>
    <p id="progress-text">Sending to {{sent}}…</p>
  </div>
  % end
</section>
<section class="card">
  <h2>Keep</h2>
  <a class="button" href="/admin/studies/{{study['id']}}/archive" id="download">Download ZIP</a>
  % if is_admin:
  <form method="post" action="/admin/studies/{{study['id']}}/protect" class="inline" id="protect-form">
    <input type="hidden" name="csrf_token" value="{{csrf}}">
    % if study["protected"]:
    <input type="hidden" name="protected" value="0">
    <button type="submit" id="unprotect">Remove protection</button>
    % else:
    <input type="hidden" name="protected" value="1">
    <label>until <input type="date" name="until" id="until"></label>
    <button type="submit" id="protect">Protect</button>
    % end
  </form>
  <form method="post" action="/admin/studies/{{study['id']}}/delete" class="inline" data-confirm="Delete this study for good?">
    <input type="hidden" name="csrf_token" value="{{csrf}}">
    <button type="submit" class="danger" id="delete">Delete</button>
  </form>
  % end
</section>
</div>
<section class="card">
<h2>Series</h2>
<table id="series">
  <tr><th>#</th><th>Modality</th><th>Description</th><th>Images</th></tr>
  % for se in study["series"]:
  <tr><td>{{se["number"]}}</td><td>{{se["modality"]}}</td><td><a href="/admin/series/{{se['id']}}">{{se["description"] or "(no description)"}}</a></td><td>{{se["instances"]}}</td></tr>
  % end
</table>
</section>

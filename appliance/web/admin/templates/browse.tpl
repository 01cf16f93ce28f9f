% rebase("base.tpl", title=title)
<h1>Browse</h1>
<form method="get" action="/admin/browse" class="search card" id="search">
  <label>Patient name <input name="name" value="{{q.name}}" id="s-name"></label>
  <label>Patient ID <input name="patient_id" value="{{q.patient_id}}" id="s-id"></label>
  <label>From (YYYYMMDD) <input name="date_from" value="{{q.date_from}}" id="s-from"></label>
  <label>To (YYYYMMDD) <input name="date_to" value="{{q.date_to}}" id="s-to"></label>
  <label>Modality <input name="modality" value="{{q.modality}}" id="s-modality" size="4"></label>
  <label>Accession <input name="accession" value="{{q.accession}}" id="s-accession"></label>
  <label>Show <select name="view" id="s-view">
    <option value="studies">studies</option>
    <option value="patients" {{'selected' if by_patient else ''}}>patients</option>
  </select></label>
  <button type="submit" id="s-search">Search</button>
</form>
% if by_patient:
<table class="results" id="patients">
  <tr><th>Patient</th><th>ID</th><th>Birth date</th><th>Sex</th><th>Studies</th><th>Last received</th></tr>
  % for p in patients:
  <tr class="patient">
    <td><a href="/admin/browse?patient_id={{p['patient_id']}}" class="patient-name">{{p["name"]}}</a>
      % if p["protected"]:
      <span class="pin" title="protected">pinned</span>
      % end
    </td>
    <td>{{p["patient_id"]}}</td><td>{{p["birth_date"]}}</td><td>{{p["sex"]}}</td><td>{{p["studies"]}}</td><td>{{when(p["last_update"])}}</td>
  </tr>
  % end
</table>
% if not patients:
<p class="small" id="no-results">No patient matches.</p>
% end
% else:
<table class="results" id="studies">
  <tr><th>Patient</th><th>ID</th><th>Date</th><th>Description</th><th>Modalities</th><th>Images</th><th>Send to</th></tr>
  % for st in studies:
  <tr class="study">
    <td><a href="/admin/studies/{{st['id']}}" class="patient-name">{{st["patient_name"]}}</a>
      % if st["protected"]:
      <span class="pin" title="protected">pinned</span>
      % end
    </td>
    <td><a href="/admin/browse?patient_id={{st['patient_id']}}">{{st["patient_id"]}}</a></td>
    <td>{{st["date"]}}</td><td>{{st["description"]}}</td>
    <td>{{" ".join(st["modalities"])}}</td><td>{{st["instances"]}}</td>
    <td>
      % if modalities:
      <form method="post" action="/admin/studies/{{st['id']}}/send" class="inline send">
        <input type="hidden" name="csrf_token" value="{{csrf}}">
        <select name="destination">
          % for m in modalities:
          <option>{{m}}</option>
          % end
        </select>
        <button type="submit" class="send-button">Send</button>
      </form>
      % end
    </td>
  </tr>
  % end
</table>
% if not studies:
<p class="small" id="no-results">No study matches.</p>
% end
% end

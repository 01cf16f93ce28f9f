% rebase("base.tpl", title=title)
<h1>Audit log</h1>
<form method="get" class="inline card">
  <label>Action starts with <input name="action" value="{{action}}"></label>
  <button type="submit">Filter</button>
</form>
<table id="audit">
  <tr><th>When</th><th>Who</th><th>From</th><th>Action</th><th>Outcome</th><th>Detail</th></tr>
  % for e in entries:
  <tr class="{{'bad' if e['outcome'] != 'ok' else ''}}"><td>{{when(e["date"])}}</td><td>{{e["user"]}}</td><td>{{e["address"]}}</td><td>{{e["action"]}}</td><td>{{e["outcome"]}}</td><td class="small">{{e["detail"]}}</td></tr>
  % end
</table>

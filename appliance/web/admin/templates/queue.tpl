% rebase("base.tpl", title=title)
<h1>Outbound queue</h1>
<table id="queue">
  <tr><th>Destination</th><th>Pending</th><th>Held</th><th>Failed</th><th>Oldest pending</th><th>Sent</th><th>Last success</th><th>Last error</th><th></th></tr>
  % for name, q in queue.items():
  <tr>
    <td>{{name}}</td><td>{{q["Pending"]}}</td><td>{{q["Held"]}}</td><td class="{{'bad' if q['Failed'] else ''}}">{{q["Failed"]}}</td>
    <td>{{("%.0f s" % q["OldestPendingAge"]) if q["OldestPendingAge"] is not None else ""}}</td>
    <td>{{q["Sent"]}}</td><td>{{when(q["LastSuccess"])}}</td><td class="small">{{q["LastError"]}}</td>
    <td>
      % if is_admin:
      <form method="post" action="/admin/queue/{{name}}/retry" class="inline"><input type="hidden" name="csrf_token" value="{{csrf}}"><button type="submit">Retry</button></form>
      <form method="post" action="/admin/queue/{{name}}/cancel" class="inline" data-confirm="Cancel every entry for this destination?"><input type="hidden" name="csrf_token" value="{{csrf}}"><button type="submit" class="danger">Cancel</button></form>
      % end
    </td>
  </tr>
  % end
</table>
% if not queue:
<p class="small">Nothing queued.</p>
% end

% rebase("base.tpl", title=title)
<h1>Dashboard</h1>
% if attention:
<section class="flash error status" id="status"><strong>Needs attention:</strong>
  <ul>
  % for item in attention:
    <li>{{item}}</li>
  % end
  </ul>
</section>
% else:
<p class="flash ok status" id="status">All good: new images accepted, no send failing.</p>
% end
<section class="card restore">
  <h2>Find a study to restore</h2>
  <form method="get" action="/admin/browse" class="inline" id="quick-search">
    <input name="name" placeholder="Patient name" id="q-name">
    <input name="patient_id" placeholder="Patient ID" id="q-id">
    <input name="date_from" placeholder="Study date YYYYMMDD" id="q-date" pattern="[0-9]{8}">
    <button type="submit" id="q-search">Search</button>
  </form>
</section>
<div class="grid">
<section class="card">
  <h2>Store</h2>
  <dl class="counts">
    <dt>Patients</dt><dd id="count-patients">{{stats["CountPatients"]}}</dd>
    <dt>Studies</dt><dd id="count-studies">{{stats["CountStudies"]}}</dd>
    <dt>Series</dt><dd>{{stats["CountSeries"]}}</dd>
    <dt>Images</dt><dd id="count-instances">{{stats["CountInstances"]}}</dd>
    <dt>Stored</dt><dd>{{size(disk.stored)}}</dd>
  </dl>
  % limit = disk.quota or disk.stored + disk.free
  % pct = min(100.0, 100.0 * disk.stored / limit) if limit else 0.0
  <div class="gauge" title="{{'%.1f' % pct}}%"><div class="fill {{'warn' if pct > 85 else ''}}" style="width: {{'%.1f' % pct}}%"></div></div>
  <p class="small">{{size(disk.stored)}} of {{size(disk.quota) + ' (quota)' if disk.quota else size(limit) + ' (stored + free disk)'}}; {{size(disk.free)}} free of {{size(disk.total)}} on the disk.</p>
</section>
<section class="card">
  <h2>Images received, last 24 h</h2>
  % top = max(hourly) or 1
  % bar = 20
  <p class="small">{{sum(hourly)}} images; the busiest hour {{top if max(hourly) else 0}}.</p>
  <svg class="graph" viewBox="0 0 {{bar * len(hourly)}} 140" role="img" aria-label="images received per hour">
    % for i, n in enumerate(hourly):
    %   h = 110.0 * n / top
    <rect x="{{i * bar + 2}}" y="{{'%.1f' % (115 - h)}}" width="{{bar - 4}}" height="{{'%.1f' % h}}"><title>{{labels[i]}}: {{n}}</title></rect>
    %   if i % 6 == 0:
    <text x="{{i * bar}}" y="135">{{labels[i]}}</text>
    %   end
    % end
    <line x1="0" y1="115.5" x2="{{bar * len(hourly)}}" y2="115.5" />
  </svg>
</section>
<section class="card">
  <h2>Last reception per source</h2>
  <table>
    <tr><th>AE title</th><th>Last</th><th>Instances</th></tr>
    % for src in sources:
    <tr><td>{{src["aet"]}}</td><td>{{when(src["last"])}}</td><td>{{src["count"]}}</td></tr>
    % end
  </table>
  % if not sources:
  <p class="small">Nothing received yet.</p>
  % end
</section>
<section class="card">
  <h2>Outbound queue</h2>
  <table>
    <tr><th>Destination</th><th>Pending</th><th>Failed</th><th>Last error</th></tr>
    % for name, q in queue.items():
    <tr><td>{{name}}</td><td>{{q["Pending"] + q["Held"]}}</td><td class="{{'bad' if q['Failed'] else ''}}">{{q["Failed"]}}</td><td class="small">{{q["LastError"]}}</td></tr>
    % end
  </table>
  % if not queue:
  <p class="small">Nothing queued.</p>
  % end
</section>
<section class="card wide">
  <h2>Recent errors</h2>
  <table>
    <tr><th>When</th><th>Destination</th><th>Outcome</th><th>Error</th></tr>
    % for f in failures:
    <tr><td>{{when(f.date)}}</td><td>{{f.destination}}</td><td>{{f.outcome}}</td><td class="small">{{f.error}}</td></tr>
    % end
  </table>
  % if not failures:
  <p class="small">No failed sends.</p>
  % end
</section>
</div>

% rebase("base.tpl", title=title)
<h1>Series {{series["tags"].get("SeriesNumber", "")}} {{series["modality"]}} <span class="small">{{series["tags"].get("SeriesDescription", "")}}</span></h1>
<p><a href="/admin/studies/{{series['study_id']}}">Back to the study</a></p>
<div class="thumbs">
% for inst in series["instances"]:
  <figure class="thumb">
    <a href="/instances/{{inst['id']}}/preview"><img loading="lazy" src="/instances/{{inst['id']}}/preview" alt="image {{inst['number']}}"></a>
    <figcaption>#{{inst["number"]}} · {{size(inst["size"])}} · <a href="/instances/{{inst['id']}}/file">DICOM</a></figcaption>
  </figure>
% end
</div>

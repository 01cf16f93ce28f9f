% rebase("base.tpl", title=title)
<h1>Upload</h1>
<section class="card">
  <p>DICOM files, or ZIP archives of them. Each file is stored as if it had been received over the network (and routed).</p>
  <input type="file" id="files" multiple>
  <button type="button" id="upload-start">Upload</button>
  <table id="upload-results">
    <tr><th>File</th><th>Progress</th><th>Result</th></tr>
  </table>
</section>

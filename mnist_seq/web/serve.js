"use strict";
// serve's reader: the drawing goes to the server as a PNG, which prepares and reads it
// (and, for a finished drawing, says which pixels decided).
async function readDigit(source, explain = false) {
  const blob = source instanceof Blob ? source
    : await new Promise(done => source.toBlob(done, "image/png"));
  const res = await fetch("/api/predict" + (explain ? "?explain=1" : ""), {method: "POST", body: blob});
  const data = await res.json();
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

"use strict";
// serve's reader: the drawing goes to the server as a PNG, which prepares and reads it.
async function readDigit(source) {
  const blob = source instanceof Blob ? source
    : await new Promise(done => source.toBlob(done, "image/png"));
  const res = await fetch("/api/predict", {method: "POST", body: blob});
  const data = await res.json();
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

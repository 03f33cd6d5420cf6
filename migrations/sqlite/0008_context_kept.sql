-- Campaign context kept per alert (issue 13): a later version of an alert that has context is
-- sent with it too, so Dropzone's latest view of the alert never loses it. Stored in the body
-- codec's form; written when context is attached, never by the page's upsert.
ALTER TABLE alerts ADD COLUMN context BLOB;

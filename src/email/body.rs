//! The body text and URL list of a message, from its text and HTML pieces in document order.
//!
//! Shared by the MIME and .msg readers so both pick and truncate the body the same way.

use super::decode::truncate;
use super::html;
use super::model::{Body, BodySource, ReportedEmail};
use super::urls::UrlSet;
use super::Limits;

/// A displayable body part, decoded to text.
pub(super) enum Piece {
    Text(String),
    Html(String),
}

/// Sets `body`, `urls` and `urls_truncated`: the plain text when there is any, else the HTML
/// reduced to text; URLs from every piece (the HTML gives link text).
pub(super) fn assemble(pieces: Vec<Piece>, limits: &Limits, out: &mut ReportedEmail) {
    let mut urls = UrlSet::new(limits.max_urls);
    let mut texts = Vec::new();
    let mut htmls = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) => {
                urls.add_bare(&text);
                if !text.trim().is_empty() {
                    texts.push(text);
                }
            }
            Piece::Html(markup) => {
                let doc = html::reduce(&markup);
                for link in &doc.links {
                    urls.add(&link.href, Some(&link.text));
                }
                urls.add_bare(&doc.text);
                if !doc.text.trim().is_empty() {
                    htmls.push(doc.text);
                }
            }
        }
    }
    let (mut text, source) = if !texts.is_empty() {
        (texts.join("\n\n"), BodySource::Text)
    } else if !htmls.is_empty() {
        (htmls.join("\n\n"), BodySource::Html)
    } else {
        (String::new(), BodySource::None)
    };
    let length = text.len();
    let truncated = truncate(&mut text, limits.body_max);
    out.body = Body {
        text,
        source,
        truncated,
        length,
    };
    let (list, urls_truncated) = urls.finish();
    if urls_truncated {
        out.errors.push(format!(
            "more than {} URLs: only the first {} are listed",
            limits.max_urls, limits.max_urls
        ));
    }
    out.urls = list;
    out.urls_truncated = urls_truncated;
}

//! Streamed listings: NDJSON answers read from the store a page at a time, each page in its
//! own short read transaction, so a slow client holds neither a thread nor a transaction.
//! `GET /v1/pins` lives here; `GET /v1/status` pages through [`stream_pages`] too.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::Response;
use tokio::sync::mpsc;

use super::{ApiError, ApiState, PinInfo};
use crate::store::Store;

/// Lines of a listing buffered between its producer and the HTTP body.
pub(crate) const LIST_BUFFER: usize = 256;
/// Entries read per read transaction of a streamed listing.
pub(crate) const LIST_PAGE: usize = 1_000;

/// Streams every pin as NDJSON, a page at a time.
pub(super) async fn list(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let store = state.store.clone();
    stream_pages(&state.tasks, listing_permit(&state)?, move |after| {
        pins_page(&store, after)
    })
}

/// One page of `GET /v1/pins`: up to [`LIST_PAGE`] pins after the key `after`. A pin past its
/// `expire_at` is left out at once, before any peer has removed it.
fn pins_page(store: &Store, after: Option<Vec<u8>>) -> Result<Page, String> {
    let reader = store.reader().map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut lines = Vec::new();
    let mut last = None;
    let mut seen = 0;
    for item in reader
        .entries(after.as_deref())
        .map_err(|e| e.to_string())?
    {
        let (cid, versions) = item.map_err(|e| e.to_string())?;
        let info = PinInfo::from_versions(&cid, &versions);
        if let Some(info) = info.filter(|i| i.expire_at.is_none_or(|at| at > now)) {
            let mut line = serde_json::to_string(&info).map_err(|e| e.to_string())?;
            line.push('\n');
            lines.push(line);
        }
        seen += 1;
        if seen == LIST_PAGE {
            last = Some(cid.to_bytes());
            break;
        }
    }
    Ok(Page { lines, next: last })
}

/// A place among the `api.max_listings` streamed listings, or 503.
pub(crate) fn listing_permit(
    state: &ApiState,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    state.listings.clone().try_acquire_owned().map_err(|_| {
        ApiError::Unavailable(format!(
            "{} listings are being streamed already (api.max_listings); try again when one ends",
            state.max_listings
        ))
    })
}

/// One page of a streamed listing.
pub(crate) struct Page {
    /// NDJSON lines, each ending in a newline.
    pub lines: Vec<String>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<Vec<u8>>,
}

/// Streams a listing as NDJSON, page by page. Each page is read by `read_page(after)` on a
/// blocking thread in its own short read transaction, and nothing is held while the client
/// reads: a slow or stalled client keeps neither a thread nor a transaction (which would keep
/// every page written since alive in the file), and the server cuts it after
/// `api.send_timeout`. A page that fails (or panics) ends the stream with an error, so the
/// client never takes a cut listing for a whole one. `permit` is its place among the
/// `api.max_listings`, held until it ends.
pub(crate) fn stream_pages<F>(
    tasks: &tokio_util::task::TaskTracker,
    permit: tokio::sync::OwnedSemaphorePermit,
    read_page: F,
) -> Result<Response, ApiError>
where
    F: Fn(Option<Vec<u8>>) -> Result<Page, String> + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(LIST_BUFFER);
    let read_page = Arc::new(read_page);
    let blocking = tasks.clone();
    tasks.spawn(async move {
        let _permit = permit;
        let mut after = None;
        loop {
            let read = read_page.clone();
            let page = blocking
                .spawn_blocking(move || read(after))
                .await
                .map_err(|e| format!("the listing failed: {e}"))
                .and_then(|page| page);
            let page = match page {
                Ok(page) => page,
                Err(err) => {
                    tracing::error!(error = %err, "a streamed listing failed");
                    let _ = tx.send(Err(std::io::Error::other(err))).await;
                    return;
                }
            };
            for line in page.lines {
                if tx.send(Ok(line)).await.is_err() {
                    return; // the client went away (or was cut)
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return,
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(crate::http::tokio_stream_from(rx)))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a streamed answer to its end: its bytes, or the error it ended with.
    async fn body_of(response: Response) -> Result<String, String> {
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|e| e.to_string())
    }

    fn permit() -> tokio::sync::OwnedSemaphorePermit {
        Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .expect("permit")
    }

    #[tokio::test]
    async fn a_listing_is_streamed_page_by_page_to_its_end() {
        let tasks = tokio_util::task::TaskTracker::new();
        let response = stream_pages(&tasks, permit(), |after| {
            let n = after.map_or(0, |a| a[0]);
            Ok(Page {
                lines: vec![format!("{n}\n")],
                next: (n < 2).then(|| vec![n + 1]),
            })
        })
        .expect("response");
        assert_eq!(body_of(response).await.as_deref(), Ok("0\n1\n2\n"));
    }

    #[tokio::test]
    async fn a_listing_whose_producer_fails_or_panics_ends_with_an_error() {
        let tasks = tokio_util::task::TaskTracker::new();
        let failing = stream_pages(&tasks, permit(), |after| match after {
            None => Ok(Page {
                lines: vec!["first\n".into()],
                next: Some(vec![1]),
            }),
            Some(_) => Err("page 2 unreadable".into()),
        })
        .expect("response");
        assert!(
            body_of(failing).await.is_err(),
            "a failed listing looked whole"
        );
        #[allow(clippy::panic)]
        let panicking = stream_pages(&tasks, permit(), |after| match after {
            None => Ok(Page {
                lines: vec!["first\n".into()],
                next: Some(vec![1]),
            }),
            Some(_) => panic!("a cursor inside a damaged page"),
        })
        .expect("response");
        assert!(
            body_of(panicking).await.is_err(),
            "a panicked listing looked whole"
        );
    }
}

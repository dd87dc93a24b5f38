//! Helpers for this crate's unit tests.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// The first value published on `rx` (the current one included) that
/// passes `check`. Panics naming `what` and the last value when none does
/// within `limit`, or when the publisher stops.
pub(crate) async fn wait_published<T: Debug>(
    rx: &mut watch::Receiver<Arc<T>>,
    limit: Duration,
    what: &str,
    check: impl Fn(&T) -> bool,
) -> Arc<T> {
    let waited = tokio::time::timeout(limit, async {
        loop {
            let current = rx.borrow_and_update().clone();
            if check(&current) {
                return current;
            }
            if rx.changed().await.is_err() {
                panic!("the publisher stopped before: {what}");
            }
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("never published: {what}; last: {:#?}", rx.borrow()))
}

//! Upgraded connections (WebSocket and others): once the backend has
//! answered `101 Switching Protocols`, the client's and the backend's
//! connections are joined and bytes are copied both ways, unparsed.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::Instrument;

/// Joins the two sides once both upgrades complete (the client's after execd
/// has sent it the 101), in a task that ends when both directions have ended.
pub(super) fn spawn(client: OnUpgrade, backend: OnUpgrade, port: u16) {
    let span = tracing::debug_span!("tunnel", port);
    tokio::spawn(
        async move {
            let (client, backend) = match tokio::try_join!(client, backend) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut backend = TokioIo::new(backend);
            match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
                Err(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
            }
        }
        .instrument(span),
    );
}

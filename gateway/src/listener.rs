//! The accept loop both protocol services share: bounded connections, every connection
//! registered in the HA module's [`ConnectionTable`], and a clean stop.

use std::future::Future;
use std::sync::Arc;

use ha::connections::{ConnectionTable, TcpConnection};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::daemon::Lifecycle;

/// Accepts on `listener` until the daemon stops, running `handle` for each connection as a
/// tracked task. `service` names the protocol in logs. Beyond `max_connections` new clients
/// wait in the kernel's backlog instead of exhausting memory.
pub async fn accept_loop<F, Fut>(
    service: &'static str,
    listener: TcpListener,
    max_connections: usize,
    connections: Arc<ConnectionTable>,
    life: Lifecycle,
    handle: F,
) where
    F: Fn(TcpStream, TcpConnection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    let handle = Arc::new(handle);
    loop {
        let permit = tokio::select! {
            _ = life.stop.cancelled() => return,
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let accepted = tokio::select! {
            _ = life.stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(service, error = %e, "accept failed");
                continue;
            }
        };
        let server = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let conn = TcpConnection::accepted(client, server);
        let client = conn.client;
        let guard = connections.register(conn);
        let counted = crate::metrics::CONNECTIONS.opened(service);
        let listed = crate::clients::CLIENTS.register(service, conn);
        tracing::debug!(service, %client, %server, "connection accepted");
        let handle = handle.clone();
        life.tasks.spawn(async move {
            tokio::select! {
                _ = handle(stream, conn) => {}
                // HA released the public address this connection came in on: drop it.
                _ = guard.reset_requested() => tracing::info!(service, %client, %server, "connection reset: its public address moved"),
            }
            tracing::debug!(service, %client, "connection closed");
            drop(guard);
            drop(counted);
            drop(listed);
            drop(permit);
        });
    }
}

//! What a node does with the durable-open events of the other nodes
//! ([`super::durable_cluster::Event`]): it keeps their records, answers a joining node's
//! question with what it knows, and lets one of its own durable opens go when its client came
//! back through another node while this node lives (the address moved: `nasgw disable`, or a
//! rebalance).
//!
//! A handed-over open stays in the lock service under this node's key, conflicting as before,
//! until the other node reclaims it (then the other node's record names it and this node
//! forgets it) or its durable timeout ends here (then this node closes it, as any detached
//! durable open).

use std::sync::Arc;
use std::time::Duration;

use super::durable_cluster::{self, Request};
use super::SmbServer;

/// How long a release waits for the open's old connection here to end (the address moved
/// a moment ago; its connection is being reset).
const SETTLE: Duration = Duration::from_secs(2);

/// Takes in one event broadcast by another node (the lock service's event sink).
pub fn on_event(server: &Arc<SmbServer>, payload: &[u8]) {
    match server.cluster_opens.receive(payload) {
        Request::None => {}
        Request::Tell => durable_cluster::tell(&server.locks, server.cluster_opens.all()),
        Request::Moved(p) => {
            let theirs = server.cluster_opens.get(p).map(|h| h.key);
            let mine = server.durable.detached_key(p).map(|(_, k)| k);
            if mine.is_some() && theirs.is_some() && theirs != mine {
                server.durable.forget_moved(server, p);
            }
        }
        Request::Release(p) => {
            if !server.durable.is_durable(p) {
                return;
            }
            let s = server.clone();
            server.durable.spawn(async move { release(&s, p).await });
        }
    }
}

/// Hands this node's durable open `p` over: its client reconnected through another node,
/// which checked it and asks. An open still attached here waits a moment for its connection
/// to end (its address just moved); one whose connection lives on is kept (its client is
/// still here, and the other node's reclaim fails).
async fn release(server: &Arc<SmbServer>, p: u64) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    while server.durable.is_attached(p) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some((file, key)) = server.durable.detached_key(p) else {
        tracing::debug!(persistent = p, "SMB: another node asked for a durable open still in use here");
        return;
    };
    match server.locks.hand_over(&file, key).await {
        Ok(()) => {
            // The node the client reconnected to sets the open's locks on the volume under
            // its own key: this node's copy goes now, not when it hears of the reclaim.
            server.volume_locks.close(file, key);
            server.cluster_opens.drop_mine(&server.locks, p, false);
            tracing::info!(persistent = p, "SMB: durable open handed over to the node its client reconnected to");
        }
        Err(e) => tracing::info!(persistent = p, error = %e, "SMB: durable open not handed over"),
    }
}

/// Asks the other nodes for the records they know each time this node comes in sync with
/// the cluster (it joined, or rejoined after a partition or restart), and once more a moment
/// later (a broadcast is best effort).
pub fn ask_on_join(server: &Arc<SmbServer>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    let (s, mut licensed) = (Arc::downgrade(server), server.locks.licensed());
    rt.spawn(async move {
        loop {
            if *licensed.borrow_and_update() {
                for wait in [Duration::ZERO, Duration::from_secs(2)] {
                    tokio::time::sleep(wait).await;
                    let Some(s) = s.upgrade() else { return };
                    durable_cluster::ask(&s.locks);
                }
            }
            if licensed.changed().await.is_err() {
                return;
            }
        }
    });
}

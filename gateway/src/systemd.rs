//! Running under systemd (`Type=notify`): READY once every service listens, STATUS with the
//! node's state, WATCHDOG while the node's loops run, STOPPING on a stop signal. Outside
//! systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::control::{Handler, Request, Response};

/// Tells systemd the daemon serves.
pub fn ready(handler: &dyn Handler) {
    let status = summary(handler);
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]) {
        tracing::warn!(error = %e, "cannot notify systemd that nasgw is ready");
    }
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// One line for `systemctl status`: this node's state, the leader, the addresses it holds.
pub fn summary(handler: &dyn Handler) -> String {
    let (Response::Status(st), Response::Ip(ip)) = (handler.handle(Request::Status), handler.handle(Request::Ip))
    else {
        return "serving".into();
    };
    let me = st.nodes.iter().find(|n| n.this_node);
    let held = ip.addresses.iter().filter(|a| a.owner == Some(ip.this_node)).count();
    format!(
        "node {} {}, {} node(s), leader {}, {held} of {} public address(es) here",
        me.map_or(0, |n| n.pnn),
        me.map_or("?".to_string(), |n| n.state.to_string()),
        st.nodes.len(),
        st.leader.map_or("none".to_string(), |l| l.to_string()),
        ip.addresses.len(),
    )
}

/// Pets systemd's watchdog (`WatchdogSec=`) while `handler` says the node's loops run, every
/// third of the interval; a stalled loop stops the petting, so systemd restarts the service.
/// Runs on the daemon's runtime, so a wedged runtime stops it too.
pub async fn watchdog(handler: Arc<dyn Handler>, stop: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else { return };
    let every = (interval / 3).max(Duration::from_millis(100));
    tracing::info!(watchdog_ms = interval.as_millis() as u64, "systemd watchdog on");
    let mut last = String::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match handler.alive() {
            Ok(()) => {
                let status = summary(handler.as_ref());
                let mut states = vec![NotifyState::Watchdog];
                if status != last {
                    states.push(NotifyState::Status(&status));
                }
                let _ = sd_notify::notify(&states);
                last = status;
            }
            Err(why) => tracing::error!(reason = %why, "a loop stalled: not petting the systemd watchdog"),
        }
    }
}

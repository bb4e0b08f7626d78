//! A round-robin TCP forwarder, the test harness's stand-in for the seed recipe's round-robin
//! DNS: one listening address whose accepted connections go to the backends in turn (the first
//! to backend 0, the second to backend 1, ...). A client that opens two connections to "the
//! server", as smbtorture's two-tree tests do, then reaches two different nodes.
//!
//! Everything (listener, upstream connections) lives in one network namespace: the forwarder
//! runs on its own thread, which enters the namespace before it makes any socket.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A running forwarder; it stops (and drops every forwarded connection) when dropped.
pub struct RoundRobinForwarder {
    addr: SocketAddr,
    routes: Arc<Mutex<Vec<usize>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RoundRobinForwarder {
    /// Listens on `listen` (port 0: any free port) inside network namespace `ns` and forwards
    /// the n-th accepted connection to `backends[n % backends.len()]`.
    pub fn start(ns: &str, listen: SocketAddr, backends: Vec<SocketAddr>) -> RoundRobinForwarder {
        assert!(!backends.is_empty(), "a forwarder needs a backend");
        let routes = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = oneshot::channel();
        let (ready, bound) = std::sync::mpsc::channel();
        let ns = ns.to_string();
        let log = routes.clone();
        let thread = std::thread::spawn(move || {
            crate::netns::enter(&ns);
            // One thread: every socket is made by this thread, so in `ns`.
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind(listen).await.expect("forwarder listens");
                ready.send(listener.local_addr().expect("local addr")).expect("report the address");
                tokio::select! {
                    _ = stopped => {}
                    _ = accept_loop(listener, backends, log) => {}
                }
            });
        });
        let addr = bound.recv().expect("the forwarder starts");
        RoundRobinForwarder { addr, routes, stop: Some(stop), thread: Some(thread) }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The backend index each accepted connection went to, in accept order.
    pub fn routes(&self) -> Vec<usize> {
        self.routes.lock().expect("routes").clone()
    }
}

async fn accept_loop(listener: TcpListener, backends: Vec<SocketAddr>, routes: Arc<Mutex<Vec<usize>>>) {
    loop {
        let Ok((client, peer)) = listener.accept().await else { continue };
        let n = {
            let mut r = routes.lock().expect("routes");
            let n = r.len() % backends.len();
            r.push(n);
            n
        };
        let backend = backends[n];
        tokio::spawn(async move {
            let Ok(mut upstream) = TcpStream::connect(backend).await else {
                eprintln!("forwarder: {peer} -> {backend}: connect failed");
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let mut client = client;
            // Either side closing (or a reset) ends both: the other sees its peer go, as it
            // would without a forwarder.
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}

impl Drop for RoundRobinForwarder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

//! ECHO: a keep-alive.

use super::Reply;

/// Handles ECHO.
pub fn handle() -> Reply {
    Reply::ok(super::logoff::empty_body())
}

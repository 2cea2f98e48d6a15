//! Logging to the host: [`log`] and the `debug!`/`info!`/`warn!`/`error!`
//! macros, which format like `format!`.

use crate::Level;

/// Write a line to the host log, tagged with this subscriber's id.
pub fn log(level: Level, message: &str) {
    crate::capabilities::host::log(level, message);
}

/// `debug!("…", args)`: a debug line in the host log.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log($crate::Level::Debug, &::std::format!($($arg)+)) };
}

/// `info!("…", args)`: an info line in the host log.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log($crate::Level::Info, &::std::format!($($arg)+)) };
}

/// `warn!("…", args)`: a warning in the host log.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log($crate::Level::Warn, &::std::format!($($arg)+)) };
}

/// `error!("…", args)`: an error line in the host log.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log($crate::Level::Error, &::std::format!($($arg)+)) };
}

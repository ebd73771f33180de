//! Applying a plugin's output. So far: [`check`], which refuses an output that is
//! malformed or exceeds what the plugin declared before anything is written.

pub mod check;

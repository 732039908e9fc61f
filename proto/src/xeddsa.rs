//! XEdDSA lives in the no-I/O crypto core; the prekey directory checks signatures with it.
pub use ferry_crypto::xeddsa::*;

//! How the command line words service errors, naming its own flags where a fix needs one.
//! (A placeholder that keeps the service's text; the wording with flag names lands with the
//! typed service errors.)

use crate::service::ServiceError;

/// The text `acexport` prints for a service error.
pub fn service_error_text(e: &ServiceError) -> String {
    e.to_string()
}

//! Registration from an enrollment token file at the agent's first start, retried while
//! the broker is unreachable.

use tokio_util::sync::CancellationToken;

use super::{AgentConfig, AgentError, Credentials, proxy_rules};

/// With a certificate identity not yet registered and an enrollment token file, registers
/// (retrying while the broker is unreachable, until `shutdown`) and deletes the token file.
/// Returns whether it registered.
pub async fn enroll(
    config: &AgentConfig,
    shutdown: &CancellationToken,
) -> Result<bool, AgentError> {
    let Credentials::Certificate {
        identity,
        enrollment_token_file: Some(token_file),
        ..
    } = &config.credentials
    else {
        return Ok(false);
    };
    if identity.join("listener.json").exists() {
        return Ok(false);
    }
    if crate::register::recover_interrupted(identity, &config.endpoint)? {
        tracing::warn!(dir = %identity.display(), "finished an interrupted registration from the certificate on disk");
        let _ = std::fs::remove_file(token_file);
        return Ok(false);
    }
    let enrollment = enrollment_token(identity, token_file)?;
    let tls = relay_io::tls::client_config(config.ca_cert.as_deref())?;
    let proxy = proxy_rules(config)?;
    let store = crate::keystore::platform_key_store();
    let mut backoff = crate::backoff::Backoff::default();
    loop {
        let attempt = crate::register::register(
            &config.endpoint,
            &enrollment,
            None,
            identity,
            &*store,
            &tls,
            proxy.as_deref(),
        );
        match attempt.await {
            Ok(registered) => {
                tracing::info!(listener = %registered.listener_id, hcs = ?registered.hybrid_connections, "registered with the enrollment token");
                let _ = std::fs::remove_file(token_file);
                return Ok(true);
            }
            Err(crate::IdentityError::Refused { status, message }) => {
                return Err(AgentError::Enrollment(format!(
                    "{status} from broker: {message}{}",
                    crate::register::refusal_hint(status)
                )));
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "enrollment failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(false),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn enrollment_token(
    identity: &std::path::Path,
    token_file: &std::path::Path,
) -> Result<crate::register::Enrollment, AgentError> {
    let token = std::fs::read_to_string(token_file).map_err(|source| {
        AgentError::Enrollment(format!(
            "no identity in {} and the enrollment token file {} is unreadable: {source}",
            identity.display(),
            token_file.display()
        ))
    })?;
    Ok(crate::register::Enrollment::Token(token.trim().to_owned()))
}

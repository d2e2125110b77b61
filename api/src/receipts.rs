//! Delivery receipts, past the edge: what the API does with a provider's report once its
//! route has authenticated and parsed it.
//!
//! [`accept`] is the one place a receipt is recorded, whether it just arrived or was held
//! because it beat the worker's record of the send; whatever must follow a delivery
//! follows its [`ReceiptRecorded::Changed`]. [`apply_held_receipts`] records the held ones
//! whose send is now known, every `VERIFY_HELD_RECEIPT_INTERVAL_MS` ([`run`]). The
//! signature Twilio puts on its callbacks is computed here too ([`twilio_signature`]), and
//! the secrets the receipt routes check callbacks with are kept here ([`ReceiptKeys`]).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use secrecy::SecretString;
use sha1::Sha1;
use tokio_util::sync::CancellationToken;
use verify_common::db::deliveries::{
    self, ReceiptRecorded, matched_held_receipts, release_held_receipt,
};
use verify_common::db::{DbError, Pool};
use verify_common::domain::Receipt;

/// What the receipt routes check callbacks with.
pub(crate) struct ReceiptKeys {
    /// The API's base URL as providers reach it: Twilio signs the URL it called.
    pub public_url: String,
    pub twilio_auth_token: Option<SecretString>,
    pub http_token: Option<SecretString>,
}

/// Held receipts recorded per round; the rest wait for the next one.
const HELD_BATCH: i64 = 500;

/// Records one receipt and logs what it did.
///
/// # Errors
/// [`DbError`] when it could not be recorded.
pub(crate) async fn accept(pool: &Pool, receipt: &Receipt) -> Result<ReceiptRecorded, DbError> {
    let recorded = deliveries::record_receipt(pool, receipt).await?;
    match recorded {
        ReceiptRecorded::Changed {
            delivery_id,
            status,
            ..
        } => tracing::debug!(
            %delivery_id,
            status = status.as_str(),
            error_code = receipt.error_code().map(|c| c.as_str()),
            "delivery receipt recorded"
        ),
        ReceiptRecorded::Unchanged {
            delivery_id,
            status,
            ..
        } => tracing::debug!(
            %delivery_id,
            status = status.as_str(),
            "delivery receipt changed nothing"
        ),
        ReceiptRecorded::Held => tracing::debug!(
            message_id = %receipt.message_id(),
            "delivery receipt held until its send is recorded"
        ),
    }
    Ok(recorded)
}

/// Records every held receipt whose send has its message id by now, and releases it.
/// Returns how many were recorded. Safe to run in several API processes at once: a
/// receipt recorded twice changes its send once.
///
/// # Errors
/// [`DbError`] when Postgres fails; what was recorded before stays recorded.
pub(crate) async fn apply_held_receipts(pool: &Pool) -> Result<usize, DbError> {
    let mut recorded = 0;
    loop {
        let held = matched_held_receipts(pool, HELD_BATCH).await?;
        for receipt in &held {
            accept(pool, receipt).await?;
            release_held_receipt(pool, receipt.message_id()).await?;
            recorded += 1;
        }
        if held.len() < usize::try_from(HELD_BATCH).unwrap_or(usize::MAX) {
            return Ok(recorded);
        }
    }
}

/// Applies held receipts every `interval` until `shutdown`.
pub(crate) async fn run(pool: Pool, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match apply_held_receipts(&pool).await {
            Ok(0) => {}
            Ok(count) => tracing::debug!(count, "held delivery receipts recorded"),
            Err(error) => tracing::warn!(%error, "could not record held delivery receipts"),
        }
    }
}

/// Twilio's signature of a callback: base64 of HMAC-SHA1 keyed with the auth token, over
/// the full URL it called followed by every POST parameter sorted by name (then value),
/// each as name and value with nothing between.
/// <https://www.twilio.com/docs/usage/webhooks/webhooks-security>
pub(crate) fn twilio_signature(
    auth_token: &[u8],
    url: &str,
    params: &[(String, String)],
) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token).expect("HMAC takes a key of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    BASE64.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::twilio_signature;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    /// The worked example of Twilio's webhook security documentation (auth token
    /// `12345`), with the parameters deliberately out of order.
    #[test]
    fn the_signature_matches_twilios_documented_example() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let documented = params(&[
            ("Digits", "1234"),
            ("To", "+18005551212"),
            ("From", "+14158675309"),
            ("Caller", "+14158675309"),
            ("CallSid", "CA1234567890ABCDE"),
        ]);

        let signature = twilio_signature(b"12345", url, &documented);

        assert_eq!(signature, "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        assert_ne!(twilio_signature(b"12346", url, &documented), signature);
        assert_ne!(
            twilio_signature(b"12345", "https://mycompany.com/myapp.php", &documented),
            signature
        );
    }
}

//! What the log line of one gRPC call says beyond what the transport sees: the layers that learn
//! it write it into the call's [`CallNote`] (authentication the caller, the handler the MSISDN
//! and request_id), and the RPC layer (`crate::ops::RpcMetricsLayer`) logs one line per call
//! when it is answered. MSISDNs are personal data: the line masks their middle digits unless
//! `log_full_msisdn` is set.

use std::sync::Mutex;

/// Filled while a call is handled; read once when it is answered.
#[derive(Debug, Default)]
pub struct CallNote {
    noted: Mutex<Noted>,
}

/// What was noted about a call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Noted {
    /// The token's name; `None` without authentication.
    pub caller: Option<String>,
    /// As the request wrote it (possibly invalid), at most [`MAX_NOTED_LEN`] characters.
    pub msisdn: Option<String>,
    pub request_id: Option<String>,
}

/// Longest value noted from a request (a hostile request_id does not fill the log).
pub const MAX_NOTED_LEN: usize = 64;

fn bounded(raw: &str) -> String {
    raw.chars()
        .take(MAX_NOTED_LEN)
        .filter(|c| !c.is_control())
        .collect()
}

impl CallNote {
    fn with(&self, f: impl FnOnce(&mut Noted)) {
        f(&mut self.noted.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn caller(&self, name: &str) {
        self.with(|n| n.caller = Some(bounded(name)));
    }

    /// The account a request is about and its idempotency key (empty: none).
    pub fn request(&self, msisdn: &str, request_id: &str) {
        self.with(|n| {
            n.msisdn = (!msisdn.is_empty()).then(|| bounded(msisdn));
            n.request_id = (!request_id.is_empty()).then(|| bounded(request_id));
        });
    }

    pub fn take(&self) -> Noted {
        std::mem::take(&mut self.noted.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// An MSISDN with its middle digits masked: the first three and the last four stay
/// (`8613800138000` → `861******8000`); seven characters or fewer are masked whole.
pub fn mask_msisdn(msisdn: &str) -> String {
    let chars: Vec<char> = msisdn.chars().collect();
    let plus = usize::from(chars.first() == Some(&'+'));
    let digits = &chars[plus..];
    if digits.len() <= 7 {
        return "*".repeat(chars.len());
    }
    let mut masked: String = chars[..plus + 3].iter().collect();
    masked.push_str(&"*".repeat(digits.len() - 7));
    masked.extend(&digits[digits.len() - 4..]);
    masked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msisdns_are_masked_in_the_middle() {
        assert_eq!(mask_msisdn("8613800138000"), "861******8000");
        assert_eq!(mask_msisdn("+8613800138000"), "+861******8000");
        assert_eq!(mask_msisdn("12345678"), "123*5678");
        assert_eq!(mask_msisdn("1234567"), "*******");
        assert_eq!(mask_msisdn(""), "");
    }

    #[test]
    fn a_note_keeps_bounded_printable_values_and_is_read_once() {
        let note = CallNote::default();
        note.caller("billing-1");
        note.request(&"9".repeat(200), "r-1\n\u{1b}[31m");
        let noted = note.take();
        assert_eq!(noted.caller.as_deref(), Some("billing-1"));
        assert_eq!(noted.msisdn.map(|m| m.len()), Some(MAX_NOTED_LEN));
        assert_eq!(noted.request_id.as_deref(), Some("r-1[31m"));
        assert_eq!(note.take(), Noted::default());
    }
}

//! Bearer-token auth of the `oversync-server` binary: JWTs signed with an HS256 secret, an
//! RS256/ES256 public key, or any key of a JWKS file; `exp` is required, `nbf`, `iss` and
//! `aud` are checked when configured, and the user id is read from one claim (`sub` unless
//! configured otherwise).

use crate::auth::AuthenticatedUser;
use crate::error::error_response;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::sync::Arc;

/// Why a verifier could not be built from its key material.
#[derive(Debug, thiserror::Error)]
pub enum JwtKeyError {
    /// The key file or secret could not be parsed.
    #[error("{what}: {reason}")]
    Invalid {
        /// Which key (`auth.public_key_file`, `auth.jwks_file`, ...).
        what: String,
        /// Parser message.
        reason: String,
    },
}

/// Where the verification keys come from.
#[derive(Clone, Debug)]
pub enum JwtKeySource {
    /// HS256 shared secret.
    Secret(String),
    /// PEM public key (`RS256` or `ES256`).
    PublicKeyPem {
        /// The algorithm the key is used with.
        algorithm: Algorithm,
        /// PEM text.
        pem: String,
    },
    /// A JWKS document (`{"keys": [...]}`); the token's `kid` picks the key.
    Jwks(String),
}

/// Claim checks besides the signature.
#[derive(Clone, Debug, Default)]
pub struct JwtChecks {
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Accepted `aud` values, when set.
    pub audience: Option<Vec<String>>,
    /// Claim holding the user id (default `sub`).
    pub user_claim: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies bearer tokens and extracts the user id.
#[derive(Clone)]
pub struct JwtVerifier {
    keys: Arc<Vec<Key>>,
    checks: JwtChecks,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .field("checks", &self.checks)
            .finish()
    }
}

/// Why a token was refused (the message of the 401).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Signature, expiry, issuer, audience or format.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// No key matches the token's `kid` / algorithm.
    #[error("invalid token: no configured key matches kid {0:?}")]
    UnknownKey(Option<String>),
    /// The user claim is absent, empty or not a string.
    #[error("invalid token: claim {0:?} must be a non-empty string")]
    MissingUser(String),
}

impl JwtVerifier {
    /// Builds a verifier from `source`.
    pub fn new(source: &JwtKeySource, checks: JwtChecks) -> Result<Self, JwtKeyError> {
        let invalid = |what: &str, e: jsonwebtoken::errors::Error| JwtKeyError::Invalid {
            what: what.to_owned(),
            reason: e.to_string(),
        };
        let keys = match source {
            JwtKeySource::Secret(secret) => vec![Key {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
            }],
            JwtKeySource::PublicKeyPem { algorithm, pem } => {
                let key = match algorithm {
                    Algorithm::ES256 => DecodingKey::from_ec_pem(pem.as_bytes()),
                    _ => DecodingKey::from_rsa_pem(pem.as_bytes()),
                }
                .map_err(|e| invalid("auth.public_key_file", e))?;
                vec![Key {
                    kid: None,
                    algorithm: *algorithm,
                    key,
                }]
            }
            JwtKeySource::Jwks(text) => {
                let set: JwkSet = serde_json::from_str(text).map_err(|e| JwtKeyError::Invalid {
                    what: "auth.jwks_file".into(),
                    reason: e.to_string(),
                })?;
                let mut keys = Vec::new();
                for jwk in &set.keys {
                    let algorithm = match &jwk.algorithm {
                        jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                        jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => {
                            Algorithm::ES256
                        }
                        jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
                        jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                    };
                    keys.push(Key {
                        kid: jwk.common.key_id.clone(),
                        algorithm,
                        key: DecodingKey::from_jwk(jwk)
                            .map_err(|e| invalid("auth.jwks_file", e))?,
                    });
                }
                if keys.is_empty() {
                    return Err(JwtKeyError::Invalid {
                        what: "auth.jwks_file".into(),
                        reason: "the key set has no keys".into(),
                    });
                }
                keys
            }
        };
        Ok(JwtVerifier {
            keys: Arc::new(keys),
            checks,
        })
    }

    fn user_claim(&self) -> &str {
        self.checks.user_claim.as_deref().unwrap_or("sub")
    }

    /// The user id of a valid token.
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let key = self
            .keys
            .iter()
            .find(|k| {
                k.algorithm == header.alg
                    && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
            })
            .ok_or_else(|| TokenError::UnknownKey(header.kid.clone()))?;
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.checks.leeway_seconds;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &self.checks.audience {
            Some(aud) => validation.set_audience(aud),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.checks.issuer {
            validation.set_issuer(&[iss]);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let claim = self.user_claim();
        match data.claims.get(claim) {
            Some(Value::String(user)) if !user.trim().is_empty() => Ok(user.trim().to_owned()),
            _ => Err(TokenError::MissingUser(claim.to_owned())),
        }
    }
}

/// Axum middleware: `Authorization: Bearer <jwt>` → [`AuthenticatedUser`], else 401.
pub async fn require_bearer(
    State(verifier): State<JwtVerifier>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authorization: Bearer <token> header required",
        );
    };
    match verifier.verify(token) {
        Ok(user) => {
            req.extensions_mut().insert(AuthenticatedUser(user));
            next.run(req).await
        }
        Err(e) => error_response(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap()
    }

    fn verifier(checks: JwtChecks) -> JwtVerifier {
        JwtVerifier::new(&JwtKeySource::Secret("s3cret".into()), checks).unwrap()
    }

    #[test]
    fn checks_expiry_issuer_audience_and_user_claim() {
        let t = now();
        let v = verifier(JwtChecks {
            issuer: Some("me".into()),
            audience: Some(vec!["sync".into()]),
            user_claim: Some("uid".into()),
            leeway_seconds: 0,
        });
        let ok = json!({"uid": "alice", "iss": "me", "aud": "sync", "exp": t + 60});
        assert_eq!(v.verify(&token(ok)).unwrap(), "alice");
        for bad in [
            json!({"uid": "alice", "iss": "me", "aud": "sync", "exp": t - 60}),
            json!({"uid": "alice", "iss": "other", "aud": "sync", "exp": t + 60}),
            json!({"uid": "alice", "iss": "me", "aud": "web", "exp": t + 60}),
            json!({"uid": "alice", "iss": "me", "aud": "sync"}),
            json!({"uid": "alice", "iss": "me", "aud": "sync", "exp": t + 60, "nbf": t + 60}),
        ] {
            assert!(
                matches!(v.verify(&token(bad.clone())), Err(TokenError::Invalid(_))),
                "{bad}"
            );
        }
        let no_user = json!({"sub": "alice", "iss": "me", "aud": "sync", "exp": t + 60});
        assert_eq!(
            v.verify(&token(no_user)),
            Err(TokenError::MissingUser("uid".into()))
        );
        let wrong_key = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"uid": "a", "iss": "me", "aud": "sync", "exp": t + 60}),
            &EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        assert!(v.verify(&wrong_key).is_err());
        // Defaults: `sub`, no issuer or audience requirement.
        let v = verifier(JwtChecks::default());
        assert_eq!(
            v.verify(&token(json!({"sub": "bob", "aud": "x", "exp": t + 60})))
                .unwrap(),
            "bob"
        );
    }

    #[test]
    fn jwks_keys_are_chosen_by_kid() {
        let jwks = json!({"keys": [
            {"kty": "oct", "kid": "k1", "k": "czNjcmV0"},
            {"kty": "oct", "kid": "k2", "k": "b3RoZXI"}
        ]});
        let v =
            JwtVerifier::new(&JwtKeySource::Jwks(jwks.to_string()), JwtChecks::default()).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k2".into());
        let t = jsonwebtoken::encode(
            &header,
            &json!({"sub": "carol", "exp": now() + 60}),
            &EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        assert_eq!(v.verify(&t).unwrap(), "carol");
        header.kid = Some("k3".into());
        let t = jsonwebtoken::encode(
            &header,
            &json!({"sub": "carol", "exp": now() + 60}),
            &EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        assert!(v.verify(&t).is_err());
        assert!(
            JwtVerifier::new(
                &JwtKeySource::PublicKeyPem {
                    algorithm: Algorithm::RS256,
                    pem: "not a pem".into()
                },
                JwtChecks::default()
            )
            .is_err()
        );
    }
}

package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
)

// Request headers every delivery carries, whoever sends it. The body is
// the event's JSON (Content-Type: application/json); each component adds
// the headers of its events (the sink X-Wormsign-Alert-Id, containment
// X-Wormsign-Change-Id and X-Wormsign-Event).
const (
	// SignatureHeader carries "sha256=" and the lower-case hex HMAC-SHA256
	// of the raw request body, keyed with the target's secret.
	SignatureHeader = "X-Wormsign-Signature"
	// AttemptHeader counts the delivery attempts of this event to this
	// target by this process, from 1. Deliveries are at least once: a
	// receiver that must not see an event twice keys it on its id.
	AttemptHeader = "X-Wormsign-Attempt"
)

// Sign returns the SignatureHeader value for body.
func Sign(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// VerifySignature checks a SignatureHeader value in constant time.
func VerifySignature(secret, body []byte, header string) bool {
	return hmac.Equal([]byte(Sign(secret, body)), []byte(header))
}

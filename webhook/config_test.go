package webhook

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestConfigurationText(t *testing.T) {
	cases := []struct {
		text    string
		want    Configuration
		wantErr bool
	}{
		{text: "noc=https://noc.example/hook;secret=abc;timeout=3s",
			want: Configuration{Name: "noc", URL: "https://noc.example/hook", Secret: "abc", Timeout: 3 * time.Second}},
		{text: "chat=http://127.0.0.1:9/x?a=b;secret=k=v",
			want: Configuration{Name: "chat", URL: "http://127.0.0.1:9/x?a=b", Secret: "k=v"}},
		{text: "f=http://a;secret_file= /run/credentials/hook ",
			want: Configuration{Name: "f", URL: "http://a", SecretFile: "/run/credentials/hook"}},
		{text: "https://no.name", wantErr: true},
		{text: "x=http://a;colour=red", wantErr: true},
		{text: "x=http://a;timeout=soon", wantErr: true},
	}
	for _, tc := range cases {
		var got Configuration
		err := got.UnmarshalText([]byte(tc.text))
		if (err != nil) != tc.wantErr {
			t.Errorf("%q: error %v, want error %v", tc.text, err, tc.wantErr)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" && !tc.wantErr {
			t.Errorf("%q (-want +got):\n%s", tc.text, diff)
		}
	}
}

func TestValidate(t *testing.T) {
	good := Configuration{Name: "a", URL: "http://x", Secret: "s"}
	cases := []struct {
		name    string
		targets []Configuration
		want    string // in the error; "" for none
	}{
		{"good", []Configuration{good, {Name: "b-2_c", URL: "HTTPS://noc.example/", Secret: "s", Timeout: time.Second}}, ""},
		{"scheme", []Configuration{{Name: "a", URL: "ftp://x", Secret: "s"}}, "k[0].url"},
		{"no host", []Configuration{good, {Name: "b", URL: "http:///x", Secret: "s"}}, "k[1].url"},
		{"no secret", []Configuration{{Name: "a", URL: "http://x"}}, "k[0].secret"},
		{"bad name", []Configuration{{Name: "a b", URL: "http://x", Secret: "s"}}, "k[0].name"},
		{"twice", []Configuration{good, good}, `k[1].name: "a" is used twice`},
		{"timeout", []Configuration{{Name: "a", URL: "http://x", Secret: "s", Timeout: -time.Second}}, "k[0].timeout"},
		{"password hidden", []Configuration{{Name: "a", URL: "ftp://ann:pw-4417@example.net/x", Secret: "s"}}, "k[0].url"},
	}
	for _, tc := range cases {
		err := ValidateTargets("k", tc.targets)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want one with %q", tc.name, err, tc.want)
		case err != nil && strings.Contains(err.Error(), "pw-4417"):
			t.Errorf("%s: error %v shows the password", tc.name, err)
		}
	}
	for _, p := range []Policy{{Queue: 0}, {Queue: 1, MinBackoff: time.Minute, MaxBackoff: time.Second}, {Queue: 1, Attempts: -1}} {
		if p.Validate() == nil {
			t.Errorf("policy %+v validated", p)
		}
	}
}

// The signature is the documented one: sha256= and the hex HMAC (the
// HMAC-SHA256 test vector of the quick brown fox).
func TestSign(t *testing.T) {
	body := []byte("The quick brown fox jumps over the lazy dog")
	want := "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
	if got := Sign([]byte("key"), body); got != want {
		t.Errorf("Sign = %s, want %s", got, want)
	}
	if !VerifySignature([]byte("key"), body, want) {
		t.Error("VerifySignature refuses the right signature")
	}
	for _, bad := range []string{"", "sha256=", strings.ToUpper(want), want[:len(want)-1] + "9"} {
		if VerifySignature([]byte("key"), body, bad) {
			t.Errorf("VerifySignature accepts %q", bad)
		}
	}
}

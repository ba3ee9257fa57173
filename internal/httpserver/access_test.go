package httpserver

import (
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/wormsign/wormsign/internal/config"
)

type accessTestConfig struct {
	HTTP Configuration `yaml:"http"`
}

// http.tokens from the file (token or token_file, ${CREDENTIALS_DIRECTORY}
// expanded) and from the environment (NAME=ROLE;token_file=PATH or
// ;token=TOKEN, comma separated); http.token is the credential "admin".
func TestCredentialsFromConfiguration(t *testing.T) {
	dir := t.TempDir()
	for name, v := range map[string]string{"router": "router-secret-1\n", "ann": "ann-secret-2\n", "admin": "admin-secret-0\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(dir, "wormsign.yaml")
	if err := os.WriteFile(file, []byte(`
http:
  token_file: ${CREDENTIALS_DIRECTORY}/admin
  tokens:
    - {name: noc-router, role: export, token_file: "${CREDENTIALS_DIRECTORY}/router"}
    - {name: ann, role: operator, token_file: `+dir+`/ann}
    - {name: bob@noc, role: viewer, token: bob-secret-3}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"CREDENTIALS_DIRECTORY=" + dir}
	load := func(file string, env []string) ([]Credential, error) {
		t.Helper()
		cfg := accessTestConfig{HTTP: DefaultConfiguration()}
		if err := config.Load(&cfg, file, env); err != nil {
			return nil, err
		}
		if err := config.ReadSecretFiles(&cfg, env); err != nil {
			return nil, err
		}
		if err := cfg.HTTP.Validate(); err != nil {
			return nil, err
		}
		creds := cfg.HTTP.Credentials()
		for i := range creds {
			creds[i].TokenFile = "" // compared apart
		}
		return creds, nil
	}
	got, err := load(file, env)
	if err != nil {
		t.Fatal(err)
	}
	want := []Credential{
		{Name: "admin", Role: RoleAdmin, Token: "admin-secret-0"},
		{Name: "noc-router", Role: RoleExport, Token: "router-secret-1"},
		{Name: "ann", Role: RoleOperator, Token: "ann-secret-2"},
		{Name: "bob@noc", Role: RoleViewer, Token: "bob-secret-3"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("from the file (-want +got):\n%s", diff)
	}

	// The environment replaces the list.
	got, err = load("", append(env, "WORMSIGN_HTTP_TOKENS=noc-router=export;token_file=${CREDENTIALS_DIRECTORY}/router, ann=operator;token_file="+dir+"/ann,carol=admin;token=carol-secret-4"))
	if err != nil {
		t.Fatal(err)
	}
	want = []Credential{
		{Name: "noc-router", Role: RoleExport, Token: "router-secret-1"},
		{Name: "ann", Role: RoleOperator, Token: "ann-secret-2"},
		{Name: "carol", Role: RoleAdmin, Token: "carol-secret-4"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("from the environment (-want +got):\n%s", diff)
	}
}

// Bad credentials stop the start with an error naming the key; no error
// shows a token.
func TestCredentialErrors(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "empty"), []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const secret = "s3cret-value-9"
	for _, tc := range []struct {
		name, yaml, env, want string
	}{
		{"duplicate name", `{tokens: [{name: ann, role: viewer, token: a-` + secret + `}, {name: ann, role: admin, token: b-` + secret + `}]}`, "",
			`http.tokens[1].name: "ann" is also http.tokens[0]'s`},
		{"duplicate token", `{tokens: [{name: ann, role: viewer, token: ` + secret + `}, {name: bob, role: admin, token: ` + secret + `}]}`, "",
			"http.tokens[1] (bob): same token as http.tokens[0] (ann)"},
		{"token shared with http.token", `{token: ` + secret + `, tokens: [{name: bob, role: viewer, token: ` + secret + `}]}`, "",
			"http.tokens[0] (bob): same token as http.token (admin)"},
		{"admin taken", `{token: a-` + secret + `, tokens: [{name: admin, role: viewer, token: b-` + secret + `}]}`, "",
			`http.tokens[0].name: "admin" is http.token's name`},
		{"no name", `{tokens: [{role: viewer, token: ` + secret + `}]}`, "", "http.tokens[0].name: empty"},
		{"bad name", `{tokens: [{name: "a b", role: viewer, token: ` + secret + `}]}`, "", `http.tokens[0].name: "a b"`},
		{"no role", `{tokens: [{name: ann, token: ` + secret + `}]}`, "", "http.tokens[0].role (ann): missing"},
		{"bad role", `{tokens: [{name: ann, role: root, token: ` + secret + `}]}`, "", `role "root": want export, viewer, operator, admin`},
		{"no token", `{tokens: [{name: ann, role: viewer}]}`, "", "http.tokens[0] (ann): no token: set http.tokens[0].token or http.tokens[0].token_file"},
		{"token and file", `{tokens: [{name: ann, role: viewer, token: ` + secret + `, token_file: ` + dir + `/empty}]}`, "",
			"http.tokens[0].token and http.tokens[0].token_file are both set"},
		{"empty file", `{tokens: [{name: ann, role: viewer, token_file: ` + dir + `/empty}]}`, "", "http.tokens[0].token_file: " + dir + "/empty is empty"},
		{"space around the token", `{tokens: [{name: ann, role: viewer, token: " ` + secret + `"}]}`, "", "http.tokens[0] (ann): the token (not shown) starts or ends with a space"},
		{"env without role", "", "ann;token=" + secret, "WORMSIGN_HTTP_TOKENS"},
		{"env bad role", "", "ann=boss;token=" + secret, `role "boss"`},
		{"env unknown key", "", "ann=viewer;secret=" + secret, `unknown key "secret"`},
		{"env duplicate", "", "ann=viewer;token=a-" + secret + ",ann=admin;token=b-" + secret, `http.tokens[1].name: "ann"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := accessTestConfig{HTTP: DefaultConfiguration()}
			file := ""
			if tc.yaml != "" {
				file = filepath.Join(t.TempDir(), "wormsign.yaml")
				if err := os.WriteFile(file, []byte("http: "+tc.yaml+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			var env []string
			if tc.env != "" {
				env = []string{"WORMSIGN_HTTP_TOKENS=" + tc.env}
			}
			err := config.Load(&cfg, file, env)
			if err == nil {
				err = config.ReadSecretFiles(&cfg, env)
			}
			if err == nil {
				err = cfg.HTTP.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("the error shows a token: %v", err)
			}
		})
	}
}

// Roles order and print; a principal can what its role and the weaker
// ones can; a 403 names the role needed.
func TestRoles(t *testing.T) {
	for i, name := range Roles {
		r, err := ParseRole(name)
		if err != nil || r != Role(i+1) || r.String() != name {
			t.Errorf("ParseRole(%q) = %v, %v", name, r, err)
		}
	}
	if RoleExport >= RoleViewer || RoleViewer >= RoleOperator || RoleOperator >= RoleAdmin {
		t.Error("roles out of order")
	}
	op := Principal{Name: "ann", Role: RoleOperator}
	for need, want := range map[Role]bool{RoleExport: true, RoleViewer: true, RoleOperator: true, RoleAdmin: false} {
		if op.Can(need) != want {
			t.Errorf("operator can %s: %v, want %v", need, !want, want)
		}
	}
	if (Principal{Name: "x"}).Can(RoleExport) {
		t.Error("no role can export")
	}
	b, err := json.Marshal(op)
	if err != nil || string(b) != `{"name":"ann","role":"operator"}` {
		t.Errorf("JSON %s %v", b, err)
	}
	rec := httptest.NewRecorder()
	Forbid(rec, op, RoleAdmin)
	if rec.Code != 403 || rec.Header().Get("Content-Type") != "application/json" || !strings.Contains(rec.Body.String(), "ann (role operator) may not do this: it needs the admin role") {
		t.Errorf("Forbid: %d %s", rec.Code, rec.Body.String())
	}
}

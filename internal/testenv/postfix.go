package testenv

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Postfix is a private Postfix instance on loopback: the ISP's relay in tests.
// Its smtpd offers STARTTLS and, only once TLS is up, AUTH PLAIN and LOGIN
// against a Cyrus sasldb; it accepts mail from an authenticated client for
// one domain only and delivers it into one Maildir that Messages reads. It
// never delivers anywhere else. It is stopped at cleanup; its log is
// printed when the test failed.
type Postfix struct {
	port         string
	user, pass   string
	serverName   string
	roots        *x509.CertPool
	maildir, log string
	certFile     string
}

// PostfixConfig says which mail the instance accepts.
type PostfixConfig struct {
	// Domain whose mail is delivered to the test's mailbox (default "customers.example").
	Domain string
}

const (
	postfixServerName = "mx.isp.example"
	// postfixRealm is the SASL realm of the credentials, smtpd's local
	// domain, so clients log in with the bare user name.
	postfixRealm = "isp.example"
)

// StartPostfix writes a whole configuration (main.cf, master.cf, a
// certificate, a sasldb) into a directory of its own, starts Postfix on it
// with `postfix -c DIR start` and waits for smtpd's 220 greeting. Each
// instance has its own queue, data directory, pid file, log and syslog
// name, so tests may run several at once.
func StartPostfix(t testing.TB, c PostfixConfig) *Postfix {
	t.Helper()
	Root(t) // Postfix wants root-owned directories and drops to the postfix user itself
	bin := Tool(t, "postfix")
	saslpasswd := Tool(t, "saslpasswd2")
	if c.Domain == "" {
		c.Domain = "customers.example"
	}
	owner, err := user.Lookup("postfix")
	if err != nil {
		Unavailable(t, "postfix user: %v (deploy/test-tools.sh installs postfix)", err)
	}
	uid, _ := strconv.Atoi(owner.Uid)
	gid, _ := strconv.Atoi(owner.Gid)

	// Not t.TempDir: its 0700 parent would keep the postfix user from
	// the sasldb and the virtual agent from the Maildir.
	dir, err := os.MkdirTemp("", "wormsign-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	mkdir := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Debian's Postfix looks for smtpd.conf in config_directory/sasl
	// whatever cyrus_sasl_config_path says: put it there for both.
	conf, sasl := mkdir("conf", 0o755), mkdir("conf/sasl", 0o755)
	mkdir("queue", 0o755)           // check makes its subdirectories, with their owners
	mailbox := mkdir("mail", 0o700) // virtual_mailbox_base, the virtual agent's as virtual_uid_maps
	if err := os.Chown(mailbox, uid, gid); err != nil {
		t.Fatalf("postfix mailbox base: %v", err)
	}
	p := &Postfix{
		port: strconv.Itoa(FreePort(t)), user: "notices", pass: "notice-relay-secret",
		serverName: postfixServerName, roots: x509.NewCertPool(),
		maildir: filepath.Join(mailbox, "mailbox"), log: filepath.Join(dir, "maillog"),
	}

	cert, key := makeCert(t, nil, nil, postfixServerName, false, []string{postfixServerName, "127.0.0.1"})
	p.roots.AddCert(cert)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p.certFile = filepath.Join(conf, "cert.pem")
	writeFile(t, p.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))
	if err := os.WriteFile(filepath.Join(conf, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}

	// smtpd opens the sasldb when a client authenticates, by then as the
	// postfix user.
	sasldb := filepath.Join(sasl, "sasldb2")
	cmd := exec.Command(saslpasswd, "-p", "-c", "-f", sasldb, "-u", postfixRealm, p.user)
	cmd.Stdin = strings.NewReader(p.pass)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("saslpasswd2: %v\n%s", err, out)
	}
	if err := os.Chown(sasldb, 0, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sasldb, 0o640); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(sasl, "smtpd.conf"), []byte(
		"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: "+sasldb+"\n"))

	writeFile(t, filepath.Join(conf, "main.cf"), []byte(fmt.Sprintf(postfixMainCf,
		dir, p.port, c.Domain, uid, gid, sasl, postfixServerName, postfixRealm)))
	writeFile(t, filepath.Join(conf, "master.cf"), []byte(fmt.Sprintf(postfixMasterCf, p.port)))

	// check creates the queue and data directories with the owners
	// Postfix insists on; start waits for the master's initialisation.
	for _, verb := range []string{"check", "start"} {
		if out, err := exec.Command(bin, "-c", conf, verb).CombinedOutput(); err != nil {
			t.Fatalf("postfix %s: %v\n%s\nlog:\n%s", verb, err, out, p.Log())
		}
	}
	t.Cleanup(func() {
		if out, err := exec.Command(bin, "-c", conf, "stop").CombinedOutput(); err != nil {
			t.Errorf("postfix stop: %v\n%s", err, out)
		}
		if t.Failed() {
			t.Logf("postfix log:\n%s", p.Log())
		}
	})
	if err := p.greets(20 * time.Second); err != nil {
		t.Fatalf("postfix smtpd on %s: %v\nlog:\n%s", p.Addr(), err, p.Log())
	}
	return p
}

// greets waits until smtpd answers a connection with 220.
func (p *Postfix) greets(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		line, err := p.greeting()
		if err == nil && strings.HasPrefix(line, "220 ") {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("greeting %q", line)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no 220 within %v: %w", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (p *Postfix) greeting() (string, error) {
	conn, err := net.DialTimeout("tcp", p.Addr(), time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	return bufio.NewReader(conn).ReadString('\n')
}

// Addr is smtpd's address, "127.0.0.1:PORT".
func (p *Postfix) Addr() string { return net.JoinHostPort("127.0.0.1", p.port) }

// User and Password are the SASL credentials smtpd accepts.
func (p *Postfix) User() string     { return p.user }
func (p *Postfix) Password() string { return p.pass }

// RootCAs holds smtpd's self-signed certificate, for a client that verifies.
func (p *Postfix) RootCAs() *x509.CertPool { return p.roots }

// ServerName is the name smtpd's certificate is for.
func (p *Postfix) ServerName() string { return p.serverName }

// CertFile is smtpd's certificate (PEM), self-signed: the CA file of a
// client that verifies.
func (p *Postfix) CertFile() string { return p.certFile }

// Log is what Postfix wrote to its maillog_file so far.
func (p *Postfix) Log() string {
	raw, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(no postfix log: %v)", err)
	}
	return string(raw)
}

// MailMessage is one delivered message.
type MailMessage struct {
	Header mail.Header
	Body   string
	Raw    []byte
}

// Messages are the messages delivered so far, in the order of delivery.
func (p *Postfix) Messages(t testing.TB) []MailMessage {
	t.Helper()
	type file struct {
		path string
		when time.Time
		raw  []byte
	}
	var files []file
	for _, sub := range []string{"new", "cur"} {
		names, _ := filepath.Glob(filepath.Join(p.maildir, sub, "*"))
		for _, name := range names {
			// The virtual agent renames a message into new/ once it is
			// written whole: what is there can be read.
			fi, err := os.Stat(name)
			if err != nil {
				t.Fatalf("delivered message: %v", err)
			}
			raw, err := os.ReadFile(name)
			if err != nil {
				t.Fatalf("delivered message: %v", err)
			}
			files = append(files, file{name, fi.ModTime(), raw})
		}
	}
	// Maildir names order by the second only; the file's time is finer.
	sort.SliceStable(files, func(i, j int) bool { return files[i].when.Before(files[j].when) })
	var out []MailMessage
	for _, fl := range files {
		f, raw := fl.path, fl.raw
		m, err := mail.ReadMessage(bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("delivered message %s: %v\n%s", f, err, raw)
		}
		body, err := io.ReadAll(m.Body)
		if err != nil {
			t.Fatalf("delivered message %s: %v", f, err)
		}
		out = append(out, MailMessage{Header: m.Header, Body: string(body), Raw: raw})
	}
	return out
}

// WaitMessages waits until at least n messages were delivered and returns
// them all; it fails the test, with Postfix's log, after timeout.
func (p *Postfix) WaitMessages(t testing.TB, n int, timeout time.Duration) []MailMessage {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msgs := p.Messages(t)
		if len(msgs) >= n {
			return msgs
		}
		if time.Now().After(deadline) {
			t.Fatalf("postfix delivered %d messages within %v, want %d\nlog:\n%s", len(msgs), timeout, n, p.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// postfixMainCf is the whole main.cf. Arguments: the instance's directory,
// the smtpd port, the domain delivered, the uid and gid of the Maildir,
// the directory of the Cyrus smtpd.conf, the host name, the SASL realm.
const postfixMainCf = `compatibility_level = 3.6
config_directory = %[1]s/conf
queue_directory = %[1]s/queue
data_directory = %[1]s/data
syslog_name = postfix-test-%[2]s
maillog_file = %[1]s/maillog
maillog_file_prefixes = %[1]s
myhostname = %[7]s
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks =
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
smtputf8_enable = no
biff = no

# Only Domain is delivered, into one Maildir; nothing leaves this host.
virtual_mailbox_domains = %[3]s
virtual_mailbox_base = %[1]s/mail
virtual_mailbox_maps = static:mailbox/
virtual_uid_maps = static:%[4]d
virtual_gid_maps = static:%[5]d
virtual_minimum_uid = %[4]d
default_transport = error:no outbound mail from a test relay
relay_transport = error:no outbound mail from a test relay
local_transport = error:no local delivery

# STARTTLS, and AUTH only over it.
smtpd_tls_security_level = may
smtpd_tls_cert_file = %[1]s/conf/cert.pem
smtpd_tls_key_file = %[1]s/conf/key.pem
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = %[6]s
smtpd_sasl_local_domain = %[8]s
smtpd_sasl_security_options = noanonymous
smtpd_relay_restrictions = reject_unauth_destination, permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
`

// postfixMasterCf runs smtpd on the port (argument 1) and only the
// daemons delivering to a Maildir needs; nothing is chrooted, postlogd
// writes maillog_file.
const postfixMasterCf = `%[1]s      inet  n       -       n       -       -       smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`

package testenv

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// usersWith adds to a users.xml a user with password, allowed from
// loopback with the default profile: the user wormsign logs in as when
// clickhouse.username and clickhouse.password are set.
func usersWith(t testing.TB, path, user, password string) []byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	entry := fmt.Sprintf("<users>\n        <%[1]s><password>%[2]s</password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>"+
		"<profile>default</profile><quota>default</quota></%[1]s>", user, password)
	return []byte(strings.Replace(string(raw), "<users>", entry, 1))
}

// SecureClickHouse is a private ClickHouse serving the native protocol
// in clear on Addr and, where the server can, with TLS on SecureAddr.
type SecureClickHouse struct {
	Addr, SecureAddr string
}

// StartSecureClickHouse18 runs Debian's clickhouse-server (18.16) with
// deploy/clickhouse's configuration plus tcp_port_secure and an openSSL
// server section with pki's certificate, and user with password beside
// the passwordless default. Killed at cleanup.
func StartSecureClickHouse18(t testing.TB, pki *PKI, user, password string) SecureClickHouse {
	t.Helper()
	server := "/usr/sbin/clickhouse-server"
	if _, err := os.Stat(server); err != nil {
		Unavailable(t, "%s is not installed (deploy/services.sh installs it)", server)
	}
	root := RepoRoot(t)
	dir := t.TempDir()
	for _, sub := range []string{"data", "tmp", "log", "user_files", "format_schemas"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	port, httpPort, securePort := FreePort(t), FreePort(t), FreePort(t)
	raw, err := os.ReadFile(filepath.Join(root, "deploy/clickhouse/config.xml"))
	if err != nil {
		t.Fatal(err)
	}
	config := strings.NewReplacer("@DIR@", dir, "@PORT@", strconv.Itoa(port), "@HTTP_PORT@", strconv.Itoa(httpPort)).Replace(string(raw))
	config = strings.Replace(config, "</yandex>", fmt.Sprintf(`    <tcp_port_secure>%d</tcp_port_secure>
    <openSSL>
        <server>
            <certificateFile>%s</certificateFile>
            <privateKeyFile>%s</privateKeyFile>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
        </server>
    </openSSL>
</yandex>`, securePort, pki.ServerCert, pki.ServerKey), 1)
	if err := os.WriteFile(filepath.Join(dir, "config.xml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "users.xml"), usersWith(t, filepath.Join(root, "deploy/clickhouse/users.xml"), user, password), 0o644); err != nil {
		t.Fatal(err)
	}
	startProcess(t, "clickhouse 18.16 (TLS)", dir, filepath.Join(dir, "log", "stdout.log"),
		func() bool { return PortOpen(port) && PortOpen(securePort) },
		server, "--config-file="+filepath.Join(dir, "config.xml"))
	return SecureClickHouse{Addr: "127.0.0.1:" + strconv.Itoa(port), SecureAddr: "127.0.0.1:" + strconv.Itoa(securePort)}
}

// StartSecureClickHouseModern runs the current ClickHouse (chdb-core's
// clickhouse-local through deploy/clickhouse-modern/serve.py) with user
// and password beside the passwordless default (chdb itself connects as
// default). clickhouse-local cannot open the secure native port ("SYSTEM
// START/STOP LISTEN in clickhouse-local supports only TCP and HTTP
// listeners"), so SecureAddr is a TLS terminator in this process with
// pki's certificate in front of the native port: it checks wormsign's
// TLS client against the current server's protocol, not the server's own
// TLS. Killed at cleanup.
func StartSecureClickHouseModern(t testing.TB, pki *PKI, user, password string) SecureClickHouse {
	t.Helper()
	root := RepoRoot(t)
	python := filepath.Join(root, ".services", "clickhouse-modern", "venv", "bin", "python")
	if _, err := os.Stat(python); err != nil {
		if out, err := exec.Command(filepath.Join(root, "deploy", "services.sh"), "up").CombinedOutput(); err != nil {
			t.Logf("deploy/services.sh up: %v\n%s", err, out)
		}
		if _, err := os.Stat(python); err != nil {
			Unavailable(t, "chdb-core missing in %s (deploy/services.sh up installs it)", python)
		}
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "log"), 0o755); err != nil {
		t.Fatal(err)
	}
	port, httpPort := FreePort(t), FreePort(t)
	raw, err := os.ReadFile(filepath.Join(root, "deploy/clickhouse-modern/config.xml"))
	if err != nil {
		t.Fatal(err)
	}
	config := strings.NewReplacer("@DIR@", dir, "@PORT@", strconv.Itoa(port), "@HTTP_PORT@", strconv.Itoa(httpPort)).Replace(string(raw))
	if err := os.WriteFile(filepath.Join(dir, "config.xml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "users.xml"), usersWith(t, filepath.Join(root, "deploy/clickhouse-modern/users.xml"), user, password), 0o644); err != nil {
		t.Fatal(err)
	}
	serve, err := os.ReadFile(filepath.Join(root, "deploy/clickhouse-modern/serve.py"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "serve.py"), serve, 0o644); err != nil {
		t.Fatal(err)
	}
	startProcess(t, "clickhouse (chdb-core)", dir, filepath.Join(dir, "log", "stdout.log"),
		func() bool { return PortOpen(port) }, python, "serve.py", filepath.Join(dir, "data"))
	addr := "127.0.0.1:" + strconv.Itoa(port)
	return SecureClickHouse{Addr: addr, SecureAddr: TLSTerminator(t, pki, addr)}
}

// TLSTerminator listens on a free loopback port with TLS (pki's server
// certificate) and forwards each connection to target in clear, until
// the test ends. It returns its address.
func TLSTerminator(t testing.TB, pki *PKI, target string) string {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(pki.ServerCert, pki.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	// Connections still open end with the server behind them.
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				// The handshake fails here when the client does not trust
				// the certificate: nothing is forwarded then.
				if err := c.(*tls.Conn).Handshake(); err != nil {
					return
				}
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{})
				go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); close(done) }()
				io.Copy(c, up)
				c.(*tls.Conn).CloseWrite()
				<-done
			}()
		}
	}()
	return l.Addr().String()
}

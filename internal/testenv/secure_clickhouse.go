package testenv

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

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
	securePort := FreePort(t)
	dir, port, args := prepareClickHouse18(t, func(config string) string {
		return strings.Replace(config, "</yandex>", fmt.Sprintf(`    <tcp_port_secure>%d</tcp_port_secure>
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
	}, usersWith(readRepoFile(t, "deploy/clickhouse/users.xml"), user, password))
	startService(t, "clickhouse 18.16 (TLS)", dir, filepath.Join(dir, "log", "stdout.log"),
		func(int) bool { return PortOpen(port) && PortOpen(securePort) }, args...)
	return SecureClickHouse{Addr: loopback(port), SecureAddr: loopback(securePort)}
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
	dir, port, args := prepareClickHouseModern(t, usersWith(readRepoFile(t, "deploy/clickhouse-modern/users.xml"), user, password))
	startService(t, "clickhouse (chdb-core)", dir, filepath.Join(dir, "log", "stdout.log"),
		func(int) bool { return PortOpen(port) }, args...)
	return SecureClickHouse{Addr: loopback(port), SecureAddr: TLSTerminator(t, pki, loopback(port))}
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

package testenv

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// PKI is a certificate authority made for one test, the certificate of a
// server on 127.0.0.1 and "localhost" it signed, and a second authority
// that signed nothing the servers use: the "untrusted" one.
type PKI struct {
	Dir string
	// CAFile trusts the servers; OtherCAFile does not.
	CAFile, OtherCAFile string
	// ServerCert and ServerKey (PEM, the key PKCS#8, unencrypted);
	// ServerPEM holds both, key first, as Kafka's PEM key store wants.
	ServerCert, ServerKey, ServerPEM string
	// ClientCert and ClientKey: a client certificate the CA signed.
	ClientCert, ClientKey string
}

// NewPKI writes a fresh PKI into a temporary directory.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	dir := t.TempDir()
	p := &PKI{Dir: dir}
	ca, caKey := makeCert(t, nil, nil, "wormsign test CA", true, nil)
	other, _ := makeCert(t, nil, nil, "wormsign untrusted CA", true, nil)
	server, serverKey := makeCert(t, ca, caKey, "localhost", false, []string{"localhost", "127.0.0.1"})
	client, clientKey := makeCert(t, ca, caKey, "wormsign", false, nil)
	write := func(name string, blocks ...*pem.Block) string {
		var b bytes.Buffer
		for _, bl := range blocks {
			pem.Encode(&b, bl)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	certBlock := func(c *x509.Certificate) *pem.Block { return &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw} }
	keyBlock := func(k *ecdsa.PrivateKey) *pem.Block {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	}
	p.CAFile = write("ca.pem", certBlock(ca))
	p.OtherCAFile = write("other-ca.pem", certBlock(other))
	p.ServerCert = write("server.pem", certBlock(server))
	p.ServerKey = write("server.key", keyBlock(serverKey))
	p.ServerPEM = write("server-store.pem", keyBlock(serverKey), certBlock(server))
	p.ClientCert = write("client.pem", certBlock(client))
	p.ClientKey = write("client.key", keyBlock(clientKey))
	return p
}

func makeCert(t testing.TB, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cn string, isCA bool, hosts []string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"wormsign tests"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if isCA {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
		tmpl.ExtKeyUsage = nil
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// PortOpen tells whether something listens on TCP port of 127.0.0.1.
func PortOpen(port int) bool { return reachable("127.0.0.1:" + strconv.Itoa(port)) }

// SecureKafka is a private single-node broker with a PLAINTEXT listener
// (for the broker itself and for tests that set things up) and a SASL_SSL
// listener that takes PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 from clients
// with a certificate of the test CA (PKI.ClientCert and ClientKey).
type SecureKafka struct {
	Plain, Secure string // 127.0.0.1:port
	PKI           *PKI
	User          string
	Password      string
}

// StartSecureKafka runs a broker from the jars deploy/services.sh fetched
// (under .services/kafka/libs) on free ports, its data in a temporary
// directory; user with password exists for PLAIN (in the JAAS
// configuration) and for both SCRAM mechanisms (added when the storage is
// formatted, with Kafka's own StorageTool). The broker is killed at
// cleanup.
func StartSecureKafka(t testing.TB, pki *PKI, user, password string) *SecureKafka {
	t.Helper()
	secure := FreePort(t)
	n := prepareKafka(t, func(port, controller int) string {
		return SecureKafkaProperties(port, secure, controller, pki.ServerPEM, user, password) +
			// And clients must show a certificate the test CA signed.
			"listener.name.sasl_ssl.ssl.client.auth=required\n" +
			"listener.name.sasl_ssl.ssl.truststore.type=PEM\n" +
			"listener.name.sasl_ssl.ssl.truststore.location=" + pki.CAFile + "\n"
	},
		"--add-scram", fmt.Sprintf("SCRAM-SHA-256=[name=%s,password=%s]", user, password),
		"--add-scram", fmt.Sprintf("SCRAM-SHA-512=[name=%s,password=%s]", user, password))
	startService(t, "kafka (SASL_SSL)", n.dir, n.log, n.started(secure), n.args...)
	return &SecureKafka{Plain: loopback(n.port), Secure: loopback(secure), PKI: pki, User: user, Password: password}
}

// SecureKafkaProperties are the lines that add a SASL_SSL listener on
// secure to deploy/kafka/server.properties (they replace its listeners):
// TLS with the PEM key store keyStore (key and certificate chain), SASL
// PLAIN with user in the JAAS configuration, SCRAM-SHA-256 and -512 from
// the credentials the cluster stores. deploy/services.sh writes the same.
func SecureKafkaProperties(port, secure, controller int, keyStore, user, password string) string {
	return fmt.Sprintf(`
# A SASL_SSL listener for clients (tests of kafka.tls and kafka.sasl)
listeners=PLAINTEXT://127.0.0.1:%[1]d,SASL_SSL://127.0.0.1:%[2]d,CONTROLLER://127.0.0.1:%[3]d
advertised.listeners=PLAINTEXT://127.0.0.1:%[1]d,SASL_SSL://127.0.0.1:%[2]d,CONTROLLER://127.0.0.1:%[3]d
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=%[4]s
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_%[5]s="%[6]s";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
`, port, secure, controller, keyStore, user, password)
}

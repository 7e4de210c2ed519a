#!/bin/sh
# Makes a throw-away PKI for trying TLS and mTLS (and for tests/auth.rs): a CA, a server
# certificate for localhost / 127.0.0.1 / ::1 and a client certificate, all signed by the CA.
#
#   scripts/make-test-certs.sh DIR
#
# writes DIR/ca.pem, DIR/ca.key, DIR/server.pem, DIR/server.key, DIR/client.pem,
# DIR/client.key (EC P-256, valid 30 days). Needs only `openssl`. Not for production.
set -eu

dir=${1:?usage: make-test-certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
days=30

ec_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

ec_key ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=ocs-lifecycle test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.pem

# $1 name, $2 subject CN, $3 extensions file
leaf() {
    ec_key "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 \
        -days "$days" -extfile "$3" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr"
}

cat > server.ext <<'EXT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
EXT
cat > client.ext <<'EXT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
EXT
leaf server localhost server.ext
leaf client ocs-test-client client.ext
rm -f server.ext client.ext ca.srl
echo "wrote $(pwd)/{ca,server,client}.{pem,key}"

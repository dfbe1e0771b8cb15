#!/usr/bin/env bash
# Make a tenant for vigil's KBS test server: a signing key pair, a signed
# policy envelope, a resource directory with a release rule, and a throwaway
# TLS CA + server certificate for 127.0.0.1.
#
#   hack/make-tenant.sh [--out DIR] [--policy FILE] [--version N] [--alg es256|ed25519]
#                       [--init-data FILE] [--resource repo/type/tag] [--tee TEE]
#
# Defaults: --out hack/out/tenant, a permissive sample policy, version 1, es256,
# resource default/vigil-policy/prod, tee sample. With --init-data the release
# rule also requires that initdata's digest.
#
# Output (DIR):
#   keys/tenant.key  keys/tenant.pub   PKCS#8 / SPKI PEM (pin tenant.pub as [policy] signer)
#   policy.jws                          the signed envelope
#   resources/                          pass to kbs-test-server --resources
#   tls/ca.pem tls/server.pem tls/server.key
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
out="$root/hack/out/tenant"
policy=""
version=1
alg=es256
init_data=""
resource="default/vigil-policy/prod"
tee=sample

while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --policy) policy="$2"; shift 2 ;;
        --version) version="$2"; shift 2 ;;
        --alg) alg="$2"; shift 2 ;;
        --init-data) init_data="$2"; shift 2 ;;
        --resource) resource="$2"; shift 2 ;;
        --tee) tee="$2"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "make-tenant.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

target="${CARGO_TARGET_DIR:-$root/target}"
cargo build --quiet --manifest-path "$root/Cargo.toml" -p kbs-test-server --bins
tenant="$target/debug/kbs-tenant"

mkdir -p "$out"
if [ -z "$policy" ]; then
    policy="$out/policy.rego"
    cat > "$policy" <<'REGO'
package agent_policy

# Sample tenant policy made by hack/make-tenant.sh: allows everything.
default AllowRequestsFailingPolicy := false
default CreateContainerRequest := true
default ExecProcessRequest := true
REGO
fi

"$tenant" keygen --alg "$alg" --out "$out/keys" >/dev/null
"$tenant" sign --key "$out/keys/tenant.key" --policy "$policy" --version "$version" --out "$out/policy.jws"
publish=(publish --resources "$out/resources" --path "$resource" --file "$out/policy.jws" --tee "$tee")
if [ -n "$init_data" ]; then
    publish+=(--init-data "$init_data")
fi
"$tenant" "${publish[@]}"
"$tenant" tls --out "$out/tls"

cat <<MSG
tenant made in $out
  start the KBS:  $target/debug/kbs-test-server --listen 127.0.0.1:8080 --resources $out/resources \\
                    --tls-cert $out/tls/server.pem --tls-key $out/tls/server.key
  agent config:   [policy] signer = contents of $out/keys/tenant.pub, min_version = $version
                  [attestation] kbs_url = "https://127.0.0.1:8080", kbs_cert = contents of $out/tls/ca.pem,
                  policy_resource = "$resource"
MSG

# Sourced by hack/demo.sh and hack/qemu/e2e.sh: the tenant side of an attested vigil
# deployment, made with kbs-tenant. Needs $bin (kbs-tenant's directory) to be set.
#
#   make_tenant WORK KBS_URL SERVER_ADDR [EXTRA_KBS_TOML] [EXTRA_CONFIG_TOML]
#
# EXTRA_CONFIG_TOML: more sections for the agent config (e.g. [workload_api]), appended last.
#
# Writes into WORK: keys/ (tenant key pair), tenant-policy.rego and policy.jws (signed,
# version 3), initdata.toml (the agent config with the pinned signer and KBS, plus a
# permissive initial policy.rego), resources/ (the signed policy released only to sample
# evidence whose init-data digest is this initdata's). Prints the initdata digest (hex), which
# the VMM must bind at launch (for the mock TEE: agent.mock_launch_binding=DIGEST).
# Optional, from the environment: TENANT_EXTRA_ENDPOINTS (more allow-list entries, e.g.
# '"ReadStreamRequest", "WaitProcessRequest"') and TENANT_EXTRA_REGO (more rules for the
# tenant policy).

make_tenant() {
    local work=$1 kbs_url=$2 server_addr=$3 extra_kbs=${4:-} extra_config=${5:-}
    "$bin/kbs-tenant" keygen --alg es256 --out "$work/keys" >/dev/null
    cat >"$work/tenant-policy.rego" <<'REGO'
package agent_policy

# The tenant's policy, delivered by the KBS. Containers may only run the pause image's command.
default AllowRequestsFailingPolicy := false
default GuestDetailsRequest := true
default CreateSandboxRequest := true
default DestroySandboxRequest := true
default ListInterfacesRequest := true
default SetPolicyRequest := false
default CreateContainerRequest := false
CreateContainerRequest if {
    input.OCI.Process.Args == ["/pause"]
}
REGO
    printf '%s\n' "${TENANT_EXTRA_REGO:-}" >>"$work/tenant-policy.rego"
    "$bin/kbs-tenant" sign --key "$work/keys/tenant.key" --policy "$work/tenant-policy.rego" \
        --version 3 --out "$work/policy.jws"
    local signer
    signer=$(cat "$work/keys/tenant.pub")
    cat >"$work/initdata.toml" <<TOML
version = "0.1.0"
algorithm = "sha384"

[data]
"vigil.toml" = '''
[agent]
server_addr = "$server_addr"

[endpoints]
allowed = ["GuestDetailsRequest", "CreateSandboxRequest", "DestroySandboxRequest",
           "CreateContainerRequest", "StartContainerRequest", "SetPolicyRequest",
           "ListInterfacesRequest"${TENANT_EXTRA_ENDPOINTS:+, $TENANT_EXTRA_ENDPOINTS}]

[policy]
signer = """
$signer"""
min_version = 2

[attestation]
tee = "mock"
policy_resource = "default/vigil-policy/prod"
deadline_secs = 60

[attestation.kbs]
kbs_url = "$kbs_url"
$extra_kbs
$extra_config
'''
"policy.rego" = '''
package agent_policy
default CreateContainerRequest := true
'''
TOML
    mkdir -p "$work/resources"
    "$bin/kbs-tenant" publish --resources "$work/resources" --path default/vigil-policy/prod \
        --file "$work/policy.jws" --tee sample --init-data "$work/initdata.toml" >/dev/null
    "$bin/kbs-tenant" init-data-digest "$work/initdata.toml"
}

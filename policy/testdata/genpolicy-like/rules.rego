# A genpolicy-style agent policy written for vigil's tests and benchmarks.
#
# Same structure and contract as the policies Kata's genpolicy emits: package agent_policy,
# constant defaults for the simple endpoints, detailed rules for the requests that carry a
# workload description (CreateContainer, CreateSandbox, ExecProcess, CopyFile, network
# updates), per-sandbox state under data.pstate fixed by the first container, and a
# generated `policy_data` document appended at the end (see gen_policy.py).
package agent_policy

import future.keywords.in
import future.keywords.if
import future.keywords.every

######################################################################
# Defaults.
#
# Endpoints without a rule below get these values; a request whose rule is not defined at
# all is refused by the agent (fail closed).

default AddARPNeighborsRequest := false
default AddSwapRequest := false
default AddSwapPathRequest := false
default CloseStdinRequest := true
default CopyFileRequest := false
default CreateContainerRequest := {"allowed": false}
default CreateSandboxRequest := false
default DestroySandboxRequest := true
default ExecProcessRequest := false
default GetDiagnosticDataRequest := false
default GetIPTablesRequest := false
default GetMetricsRequest := true
default GetOOMEventRequest := true
default GuestDetailsRequest := true
default ListInterfacesRequest := true
default ListRoutesRequest := true
default MemAgentCompactConfig := false
default MemAgentMemcgConfig := false
default MemHotplugByProbeRequest := false
default OnlineCPUMemRequest := true
default PauseContainerRequest := true
default RemoveContainerRequest := true
default RemoveStaleVirtiofsShareMountsRequest := true
default ReseedRandomDevRequest := false
default ResizeVolumeRequest := false
default ResumeContainerRequest := true
default SetGuestDateTimeRequest := false
default SetIPTablesRequest := false
default SignalProcessRequest := true
default StartContainerRequest := true
default StatsContainerRequest := true
default TtyWinResizeRequest := true
default UpdateContainerRequest := true
default UpdateEphemeralMountsRequest := false
default UpdateInterfaceRequest := false
default UpdateRoutesRequest := false
default VolumeStatsRequest := true
default WaitProcessRequest := true

# Stream endpoints follow the pod's settings in policy_data.
ReadStreamRequest := policy_data.request_defaults.ReadStreamRequest
WriteStreamRequest := policy_data.request_defaults.WriteStreamRequest

# Replacing the policy at run time is off for this pod.
SetPolicyRequest := policy_data.request_defaults.SetPolicyRequest

# Diagnostics endpoints are allowed when the pod is not confidential.
GetIPTablesRequest if {
    not policy_data.common.confidential
}

######################################################################
# Policy state: values fixed by the first request that sets them.

state_key_sandbox_name := "sandbox_name"
state_key_sandbox_namespace := "sandbox_namespace"

get_state := data.pstate

get_state_val(key) := value if {
    value := get_state[key]
}

get_state_path(key) := path if {
    path := concat("/", ["/pstate", key])
}

# A state check either adds the value (first time) or requires it to match.
state_allows(key, value) := op if {
    not get_state_val(key)
    op := {"op": "add", "path": get_state_path(key), "value": value}
}

state_allows(key, value) := null if {
    get_state_val(key) == value
}

# Keep non-null ops only.
append_op(ops, op) := ops if {
    op == null
}

append_op(ops, op) := array.concat(ops, [op]) if {
    op != null
}

######################################################################
# CreateContainerRequest

CreateContainerRequest := {"allowed": true, "ops": ops} if {
    i_oci := input.OCI
    i_storages := input.storages
    i_devices := input.devices

    print("CreateContainerRequest: container_id =", input.container_id)

    # The host cannot ask for the sandbox PID namespace unless the pod shares it.
    input.sandbox_pidns == policy_data.sandbox.pidns

    # Only the annotation subset the policy knows about.
    allow_annotation_keys(i_oci.Annotations)

    some p_container in policy_data.containers
    print("CreateContainerRequest: trying policy container", p_container.name)

    p_oci := p_container.OCI
    p_oci.Version == i_oci.Version
    p_oci.Root.Readonly == i_oci.Root.Readonly

    # Sandbox identity: fixed by the first container, checked for every later one.
    sandbox_name := i_oci.Annotations[annotation_sandbox_name]
    sandbox_namespace := i_oci.Annotations[annotation_sandbox_namespace]
    allow_sandbox_namespace(p_oci, sandbox_namespace)

    op_name := state_allows(state_key_sandbox_name, sandbox_name)
    op_namespace := state_allows(state_key_sandbox_namespace, sandbox_namespace)

    allow_by_container_type(p_oci, i_oci, sandbox_name, sandbox_namespace)
    allow_by_bundle_or_sandbox_id(p_container, i_oci, i_storages)
    allow_linux(p_oci, i_oci)
    allow_process(p_oci.Process, i_oci.Process, sandbox_name)
    allow_devices(p_container, i_devices)

    ops1 := append_op([], op_name)
    ops := append_op(ops1, op_namespace)

    print("CreateContainerRequest: allowed with", count(ops), "state ops")
}

######################################################################
# Annotations

annotation_sandbox_name := "io.kubernetes.cri.sandbox-name"
annotation_sandbox_namespace := "io.kubernetes.cri.sandbox-namespace"
annotation_container_type := "io.kubernetes.cri.container-type"
annotation_kata_type := "io.katacontainers.pkg.oci.container_type"
annotation_container_name := "io.kubernetes.cri.container-name"
annotation_sandbox_id := "io.kubernetes.cri.sandbox-id"
annotation_bundle_path := "io.katacontainers.pkg.oci.bundle_path"
annotation_log_directory := "io.kubernetes.cri.sandbox-log-directory"
annotation_image_name := "io.kubernetes.cri.image-name"
annotation_sandbox_uid := "io.kubernetes.cri.sandbox-uid"

known_annotation_prefixes := [
    "io.kubernetes.cri.",
    "io.katacontainers.pkg.oci.",
    "nerdctl/",
]

allow_annotation_keys(annotations) if {
    every key, _ in annotations {
        some prefix in known_annotation_prefixes
        startswith(key, prefix)
    }
}

allow_sandbox_namespace(p_oci, i_namespace) if {
    p_namespace := p_oci.Annotations[annotation_sandbox_namespace]
    p_namespace == i_namespace
}

allow_sandbox_namespace(p_oci, i_namespace) if {
    not p_oci.Annotations[annotation_sandbox_namespace]
    regex.match(policy_data.common.default_namespace_regex, i_namespace)
}

annotation_equal(p_oci, i_oci, key) if {
    p_oci.Annotations[key] == i_oci.Annotations[key]
}

annotation_missing(p_oci, i_oci, key) if {
    not p_oci.Annotations[key]
    not i_oci.Annotations[key]
}

######################################################################
# Container type: the pause ("sandbox") container and application containers get
# different checks.

allow_by_container_type(p_oci, i_oci, sandbox_name, sandbox_namespace) if {
    i_type := i_oci.Annotations[annotation_container_type]
    i_type == "sandbox"
    p_oci.Annotations[annotation_container_type] == "sandbox"
    i_oci.Annotations[annotation_kata_type] == "pod_sandbox"

    allow_hostname(p_oci.Hostname, i_oci.Hostname, sandbox_name)
    annotation_missing(p_oci, i_oci, annotation_container_name)
    allow_sandbox_log_directory(p_oci, i_oci, sandbox_name, sandbox_namespace)
    print("allow_by_container_type: sandbox container accepted")
}

allow_by_container_type(p_oci, i_oci, sandbox_name, sandbox_namespace) if {
    i_type := i_oci.Annotations[annotation_container_type]
    i_type == "container"
    p_oci.Annotations[annotation_container_type] == "container"
    i_oci.Annotations[annotation_kata_type] == "pod_container"

    annotation_equal(p_oci, i_oci, annotation_container_name)
    annotation_missing(p_oci, i_oci, annotation_log_directory)
    allow_image_name(p_oci, i_oci)
    print("allow_by_container_type: application container accepted")
}

allow_hostname(p_hostname, i_hostname, sandbox_name) if {
    p_hostname == i_hostname
}

allow_hostname(p_hostname, i_hostname, sandbox_name) if {
    p_hostname == "$(sandbox-name)"
    i_hostname == sandbox_name
}

allow_sandbox_log_directory(p_oci, i_oci, sandbox_name, sandbox_namespace) if {
    p_dir := p_oci.Annotations[annotation_log_directory]
    r1 := replace(p_dir, "$(sandbox-name)", sandbox_name)
    r2 := replace(r1, "$(sandbox-namespace)", sandbox_namespace)
    regex.match(r2, i_oci.Annotations[annotation_log_directory])
}

allow_image_name(p_oci, i_oci) if {
    p_image := p_oci.Annotations[annotation_image_name]
    p_image == i_oci.Annotations[annotation_image_name]
}

allow_image_name(p_oci, i_oci) if {
    annotation_missing(p_oci, i_oci, annotation_image_name)
}

######################################################################
# Bundle and sandbox ids: derived from the request, then used to check the root path,
# mounts and storages.

allow_by_bundle_or_sandbox_id(p_container, i_oci, i_storages) if {
    p_oci := p_container.OCI
    bundle_path := i_oci.Annotations[annotation_bundle_path]
    bundle_id := replace(bundle_path, policy_data.common.bundle_path_prefix, "")
    regex.match("^[a-z0-9]{64}$", bundle_id)

    sandbox_id := i_oci.Annotations[annotation_sandbox_id]
    regex.match(p_oci.Annotations[annotation_sandbox_id], sandbox_id)

    allow_root_path(p_oci, i_oci, bundle_id)

    every i_mount in i_oci.Mounts {
        allow_mount(p_oci, i_mount, bundle_id, sandbox_id)
    }

    allow_storages(p_container.storages, i_storages, bundle_id, sandbox_id)
    print("allow_by_bundle_or_sandbox_id: bundle", bundle_id, "sandbox", sandbox_id)
}

allow_root_path(p_oci, i_oci, bundle_id) if {
    p_path1 := replace(p_oci.Root.Path, "$(cpath)", policy_data.common.cpath)
    p_path2 := replace(p_path1, "$(bundle-id)", bundle_id)
    p_path2 == i_oci.Root.Path
}

######################################################################
# Mounts

allow_mount(p_oci, i_mount, bundle_id, sandbox_id) if {
    some p_mount in p_oci.Mounts
    mount_allows(p_mount, i_mount, bundle_id, sandbox_id)
}

mount_allows(p_mount, i_mount, bundle_id, sandbox_id) if {
    p_mount == i_mount
}

mount_allows(p_mount, i_mount, bundle_id, sandbox_id) if {
    p_mount.destination == i_mount.destination
    p_mount.type_ == i_mount.type_
    p_mount.options == i_mount.options
    mount_source_allows(p_mount, i_mount, bundle_id, sandbox_id)
}

mount_source_allows(p_mount, i_mount, bundle_id, sandbox_id) if {
    r1 := replace(p_mount.source, "$(sfprefix)", policy_data.common.sfprefix)
    r2 := replace(r1, "$(cpath)", policy_data.common.cpath)
    r3 := replace(r2, "$(bundle-id)", bundle_id)
    regex.match(r3, i_mount.source)
}

mount_source_allows(p_mount, i_mount, bundle_id, sandbox_id) if {
    r1 := replace(p_mount.source, "$(sfprefix)", policy_data.common.sfprefix)
    r2 := replace(r1, "$(sandbox-id)", sandbox_id)
    regex.match(r2, i_mount.source)
}

######################################################################
# Storages

allow_storages(p_storages, i_storages, bundle_id, sandbox_id) if {
    count(p_storages) == count(i_storages)
    every i_storage in i_storages {
        some p_storage in p_storages
        allow_storage(p_storage, i_storage, bundle_id, sandbox_id)
    }
}

allow_storage(p_storage, i_storage, bundle_id, sandbox_id) if {
    p_storage.driver == i_storage.driver
    p_storage.driver_options == i_storage.driver_options
    p_storage.fstype == i_storage.fstype
    p_storage.shared == i_storage.shared
    allow_storage_options(p_storage, i_storage)
    allow_mount_point(p_storage, i_storage, bundle_id, sandbox_id)
    allow_storage_source(p_storage, i_storage, bundle_id, sandbox_id)
    allow_fs_group(p_storage, i_storage)
}

allow_storage_options(p_storage, i_storage) if {
    p_storage.options == i_storage.options
}

allow_storage_options(p_storage, i_storage) if {
    p_storage.driver == "image_guest_pull"
    count(i_storage.options) == 1
    startswith(i_storage.options[0], "image_guest_pull=")
}

allow_mount_point(p_storage, i_storage, bundle_id, sandbox_id) if {
    r1 := replace(p_storage.mount_point, "$(cpath)", policy_data.common.cpath)
    r2 := replace(r1, "$(bundle-id)", bundle_id)
    r3 := replace(r2, "$(sandbox-id)", sandbox_id)
    regex.match(r3, i_storage.mount_point)
}

allow_storage_source(p_storage, i_storage, bundle_id, sandbox_id) if {
    p_storage.source == i_storage.source
}

allow_storage_source(p_storage, i_storage, bundle_id, sandbox_id) if {
    startswith(p_storage.source, "^")
    r1 := replace(p_storage.source, "$(sandbox-id)", sandbox_id)
    regex.match(r1, i_storage.source)
}

allow_fs_group(p_storage, i_storage) if {
    p_storage.fs_group == i_storage.fs_group
}

allow_fs_group(p_storage, i_storage) if {
    p_storage.fs_group == null
    i_storage.fs_group.group_id == 0
}

######################################################################
# Devices: only the ones the pod declared.

allow_devices(p_container, i_devices) if {
    every i_device in i_devices {
        some p_device in p_container.devices
        p_device.container_path == i_device.container_path
        p_device.type_ == i_device.type_
    }
}

######################################################################
# Linux section of the OCI spec.

allow_linux(p_oci, i_oci) if {
    p_linux := p_oci.Linux
    i_linux := i_oci.Linux

    allow_namespaces(p_linux.Namespaces, i_linux.Namespaces)
    allow_masked_paths(p_linux, i_linux)
    allow_readonly_paths(p_linux, i_linux)
    allow_sysctl(p_linux, i_linux)
    i_linux.Seccomp == p_linux.Seccomp
    print("allow_linux: success")
}

allow_namespaces(p_namespaces, i_namespaces) if {
    p_types := {t | some ns in p_namespaces; t := ns.Type}
    i_types := {t | some ns in i_namespaces; t := ns.Type}
    p_types == i_types

    # Only the network namespace may be joined by path, and only the sandbox's.
    every ns in i_namespaces {
        allow_namespace_path(ns)
    }
}

allow_namespace_path(ns) if {
    ns.Path == ""
}

allow_namespace_path(ns) if {
    ns.Type == "network"
    startswith(ns.Path, "/var/run/netns/")
}

# Every path the policy masks stays masked; the runtime may add paths it also makes
# read-only, nothing else.
allow_masked_paths(p_linux, i_linux) if {
    every path in p_linux.MaskedPaths {
        path in i_linux.MaskedPaths
    }
    every path in i_linux.MaskedPaths {
        masked_path_known(path, p_linux)
    }
}

masked_path_known(path, p_linux) if {
    path in p_linux.MaskedPaths
}

masked_path_known(path, p_linux) if {
    path in p_linux.ReadonlyPaths
}

allow_readonly_paths(p_linux, i_linux) if {
    allow_array(p_linux.ReadonlyPaths, i_linux.ReadonlyPaths)
    allow_array(i_linux.ReadonlyPaths, p_linux.ReadonlyPaths)
}

# Paths may move from readonly to masked (runtimes do that), never the other way.
allow_readonly_paths(p_linux, i_linux) if {
    every path in i_linux.ReadonlyPaths {
        path in p_linux.ReadonlyPaths
    }
    every path in p_linux.ReadonlyPaths {
        readonly_or_masked(path, i_linux)
    }
}

readonly_or_masked(path, i_linux) if {
    path in i_linux.ReadonlyPaths
}

readonly_or_masked(path, i_linux) if {
    path in i_linux.MaskedPaths
}

allow_array(p_array, i_array) if {
    every i_element in i_array {
        i_element in p_array
    }
}

allow_sysctl(p_linux, i_linux) if {
    every key, value in i_linux.Sysctl {
        p_linux.Sysctl[key] == value
    }
}

######################################################################
# Process

allow_process(p_process, i_process, sandbox_name) if {
    p_process.Terminal == i_process.Terminal
    p_process.NoNewPrivileges == i_process.NoNewPrivileges
    allow_cwd(p_process, i_process)
    allow_user(p_process.User, i_process.User)
    allow_capabilities(p_process.Capabilities, i_process.Capabilities)
    allow_args(p_process, i_process)
    allow_env(p_process, i_process, sandbox_name)
    allow_rlimits(p_process, i_process)
    print("allow_process: success")
}

allow_cwd(p_process, i_process) if {
    p_process.Cwd == i_process.Cwd
}

allow_cwd(p_process, i_process) if {
    p_process.Cwd == ""
    i_process.Cwd == "/"
}

allow_user(p_user, i_user) if {
    p_user.UID == i_user.UID
    p_user.GID == i_user.GID
    every gid in i_user.AdditionalGids {
        gid in p_user.AdditionalGids
    }
}

allow_capabilities(p_caps, i_caps) if {
    allow_cap_set(p_caps.Bounding, i_caps.Bounding)
    allow_cap_set(p_caps.Effective, i_caps.Effective)
    allow_cap_set(p_caps.Inheritable, i_caps.Inheritable)
    allow_cap_set(p_caps.Permitted, i_caps.Permitted)
    allow_cap_set(p_caps.Ambient, i_caps.Ambient)
}

allow_cap_set(p_set, i_set) if {
    every cap in i_set {
        cap in p_set
    }
}

# The runtime may spell default capabilities with the common prefix removed.
allow_cap_set(p_set, i_set) if {
    "$(default_caps)" in p_set
    every cap in i_set {
        cap in policy_data.common.default_caps
    }
}

allow_rlimits(p_process, i_process) if {
    every i_limit in i_process.Rlimits {
        some p_limit in p_process.Rlimits
        p_limit.Type == i_limit.Type
        i_limit.Hard <= p_limit.Hard
        i_limit.Soft <= p_limit.Soft
    }
}

######################################################################
# Arguments

allow_args(p_process, i_process) if {
    count(p_process.Args) == 0
    count(i_process.Args) == 0
}

allow_args(p_process, i_process) if {
    count(p_process.Args) == count(i_process.Args)
    every i, i_arg in i_process.Args {
        allow_arg(i, i_arg, p_process)
    }
}

allow_arg(i, i_arg, p_process) if {
    i_arg == p_process.Args[i]
}

allow_arg(i, i_arg, p_process) if {
    contains(p_process.Args[i], "$(node-name)")
    regex.match("^[a-z0-9.-]{1,63}$", i_arg)
}

######################################################################
# Environment

allow_env(p_process, i_process, sandbox_name) if {
    every env_var in i_process.Env {
        allow_env_var(p_process, env_var, sandbox_name)
    }
}

# Literally in the policy.
allow_env_var(p_process, env_var, sandbox_name) if {
    env_var in p_process.Env
}

# In the policy after substituting the sandbox name.
allow_env_var(p_process, env_var, sandbox_name) if {
    some p_var in p_process.Env
    contains(p_var, "$(sandbox-name)")
    replace(p_var, "$(sandbox-name)", sandbox_name) == env_var
}

# A policy regex.
allow_env_var(p_process, env_var, sandbox_name) if {
    some p_var in p_process.Env
    startswith(p_var, "^")
    regex.match(p_var, env_var)
}

# Kubernetes service discovery variables.
allow_env_var(p_process, env_var, sandbox_name) if {
    name_value := split(env_var, "=")
    count(name_value) == 2
    service_env_var(name_value[0], name_value[1])
}

# Field references resolved by the host: value must be an IP.
allow_env_var(p_process, env_var, sandbox_name) if {
    name_value := split(env_var, "=")
    count(name_value) == 2
    is_ip(name_value[1])
    some p_var in p_process.Env
    p_name_value := split(p_var, "=")
    p_name_value[0] == name_value[0]
    p_name_value[1] in ["$(pod-ip)", "$(host-ip)"]
}

# Field references resolved by the host: node name and pod uid.
allow_env_var(p_process, env_var, sandbox_name) if {
    name_value := split(env_var, "=")
    count(name_value) == 2
    some p_var in p_process.Env
    p_name_value := split(p_var, "=")
    p_name_value[0] == name_value[0]
    p_name_value[1] in ["$(node-name)", "$(pod-uid)"]
    regex.match("^[a-zA-Z0-9.-]{1,253}$", name_value[1])
}

# FOO_SERVICE_HOST=10.0.0.1
service_env_var(name, value) if {
    parts := split(name, "_")
    n := count(parts)
    n >= 3
    parts[n - 1] == "HOST"
    parts[n - 2] == "SERVICE"
    is_ip(value)
}

# FOO_SERVICE_PORT=443 and FOO_SERVICE_PORT_HTTPS=443
service_env_var(name, value) if {
    parts := split(name, "_")
    n := count(parts)
    n >= 3
    parts[n - 1] == "PORT"
    parts[n - 2] == "SERVICE"
    is_port(value)
}

service_env_var(name, value) if {
    parts := split(name, "_")
    n := count(parts)
    n >= 4
    parts[n - 2] == "PORT"
    parts[n - 3] == "SERVICE"
    is_port(value)
}

# FOO_PORT=tcp://10.0.0.1:443
service_env_var(name, value) if {
    parts := split(name, "_")
    n := count(parts)
    n >= 2
    parts[n - 1] == "PORT"
    is_tcp_uri(value)
}

# FOO_PORT_443_TCP=tcp://10.0.0.1:443
service_env_var(name, value) if {
    parts := split(name, "_")
    n := count(parts)
    n >= 4
    parts[n - 1] == "TCP"
    parts[n - 3] == "PORT"
    port := parts[n - 2]
    is_port(port)
    is_tcp_uri(value)
    endswith(value, concat("", [":", port]))
}

# FOO_PORT_443_TCP_PROTO=tcp
service_env_var(name, value) if {
    parts := split(name, "_")
    n := count(parts)
    n >= 5
    parts[n - 1] == "PROTO"
    parts[n - 2] == "TCP"
    parts[n - 4] == "PORT"
    is_port(parts[n - 3])
    value == "tcp"
}

# FOO_PORT_443_TCP_PORT=443
service_env_var(name, value) if {
    parts := split(name, "_")
    n := count(parts)
    n >= 5
    parts[n - 1] == "PORT"
    parts[n - 2] == "TCP"
    parts[n - 3] == value
    parts[n - 4] == "PORT"
    is_port(value)
}

# FOO_PORT_443_TCP_ADDR=10.0.0.1
service_env_var(name, value) if {
    parts := split(name, "_")
    n := count(parts)
    n >= 5
    parts[n - 1] == "ADDR"
    parts[n - 2] == "TCP"
    parts[n - 4] == "PORT"
    is_port(parts[n - 3])
    is_ip(value)
}

is_ip(value) if {
    octets := split(value, ".")
    count(octets) == 4
    every i, octet in octets {
        is_octet(i, octet)
    }
}

is_octet(0, octet) if {
    n := to_number(octet)
    n >= 1
    n <= 255
}

is_octet(i, octet) if {
    i > 0
    n := to_number(octet)
    n >= 0
    n <= 255
}

is_port(value) if {
    regex.match("^[0-9]{1,5}$", value)
    n := to_number(value)
    n >= 1
    n <= 65535
}

is_tcp_uri(value) if {
    parts := split(value, "//")
    count(parts) == 2
    parts[0] == "tcp:"
    host_port := split(parts[1], ":")
    count(host_port) == 2
    is_ip(host_port[0])
    is_port(host_port[1])
}

######################################################################
# CreateSandboxRequest

CreateSandboxRequest if {
    input.sandbox_pidns == policy_data.sandbox.pidns
    input.guest_hook_path == ""
    count(input.kernel_modules) == 0
    regex.match(policy_data.sandbox.hostname_regex, input.hostname)
    every dns in input.dns {
        allow_dns(dns)
    }
    allow_sandbox_storages(input.storages)
    print("CreateSandboxRequest: success")
}

allow_dns(dns) if {
    startswith(dns, "nameserver ")
    is_ip(substring(dns, 11, -1))
}

allow_dns(dns) if {
    some prefix in ["search ", "options "]
    startswith(dns, prefix)
}

allow_sandbox_storages(i_storages) if {
    every i_storage in i_storages {
        some p_storage in policy_data.sandbox.storages
        p_storage.driver == i_storage.driver
        p_storage.fstype == i_storage.fstype
        p_storage.options == i_storage.options
        regex.match(p_storage.mount_point, i_storage.mount_point)
        regex.match(p_storage.source, i_storage.source)
    }
}

######################################################################
# ExecProcessRequest: only the commands the pod declared, in containers the policy knows.

ExecProcessRequest if {
    i_process := input.process
    some p_container in policy_data.containers
    some p_command in p_container.exec_commands
    p_command == i_process.Args
    allow_exec_process(p_container.OCI.Process, i_process)
    print("ExecProcessRequest: command", concat(" ", i_process.Args), "allowed")
}

ExecProcessRequest if {
    i_process := input.process
    some p_regex in policy_data.request_defaults.ExecProcessRequest.regex
    regex.match(p_regex, concat(" ", i_process.Args))
    i_process.User.UID != 0
    print("ExecProcessRequest: command matched a regex")
}

allow_exec_process(p_process, i_process) if {
    i_process.NoNewPrivileges == p_process.NoNewPrivileges
    allow_user(p_process.User, i_process.User)
    allow_capabilities(p_process.Capabilities, i_process.Capabilities)
    every env_var in i_process.Env {
        exec_env_allowed(p_process, env_var)
    }
}

exec_env_allowed(p_process, env_var) if {
    env_var in p_process.Env
}

exec_env_allowed(p_process, env_var) if {
    name_value := split(env_var, "=")
    count(name_value) == 2
    service_env_var(name_value[0], name_value[1])
}

######################################################################
# CopyFileRequest (input already converted by the agent: path, file_type, symlink_target).

CopyFileRequest if {
    some regex1 in policy_data.request_defaults.CopyFileRequest
    r := replace(regex1, "$(sfprefix)", policy_data.common.sfprefix)
    regex.match(r, input.path)
    copy_file_type_allowed
    print("CopyFileRequest: path allowed")
}

copy_file_type_allowed if {
    input.file_type in ["Regular", "Directory"]
}

copy_file_type_allowed if {
    input.file_type == "Symlink"
    not startswith(input.symlink_target, "/")
    every part in split(input.symlink_target, "/") {
        part != ".."
    }
}

######################################################################
# Network configuration

UpdateInterfaceRequest if {
    i_interface := input.interface
    i_interface.name in policy_data.network.interface_names
    i_interface.raw_flags == 0
    i_interface.mtu <= policy_data.network.max_mtu
    regex.match("^([0-9a-f]{2}:){5}[0-9a-f]{2}$", i_interface.hwAddr)
    every ip in i_interface.IPAddresses {
        allow_ip_address(ip)
    }
}

allow_ip_address(ip) if {
    ip.family == 0
    is_ip(ip.address)
    to_number(ip.mask) <= 32
}

allow_ip_address(ip) if {
    ip.family == 1
    contains(ip.address, ":")
    to_number(ip.mask) <= 128
}

UpdateRoutesRequest if {
    every route in input.routes.Routes {
        allow_route(route)
    }
}

allow_route(route) if {
    route.device in policy_data.network.interface_names
    not route.dest in policy_data.network.forbidden_destinations
}

AddARPNeighborsRequest if {
    every neighbor in input.neighbors.ARPNeighbors {
        neighbor.device in policy_data.network.interface_names
        is_ip(neighbor.toIPAddress.address)
    }
}

######################################################################
# Ephemeral mounts: only the sandbox's shared memory.

UpdateEphemeralMountsRequest if {
    every storage in input.storages {
        storage.driver == "ephemeral"
        storage.fstype == "tmpfs"
        startswith(storage.mount_point, policy_data.common.ephemeral_prefix)
    }
}

######################################################################
# Swap and memory hot-plug: allowed when the pod asked for them.

AddSwapRequest if {
    policy_data.request_defaults.AddSwapRequest
    count(input.PCIPath) > 0
}

MemHotplugByProbeRequest if {
    policy_data.request_defaults.MemHotplugByProbeRequest
    every addr in input.memHotplugProbeAddr {
        addr > 0
    }
}

#!/usr/bin/env python3
"""Generate policy.rego (rules.rego + a generated policy_data document) and matching
requests for vigil's genpolicy-like test policy.

The pod: one pause container and four application containers (web server, cache, worker,
log sidecar), each with the environment, capabilities, mounts and storages a Kubernetes
runtime would send. Requests are in the Kata JSON shape (every field present, proto field
names, `type_`, unset messages as null).

Run from this directory: python3 gen_policy.py
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

SANDBOX_NAME = "shop-frontend-7d9f8c6b5-x2k4q"
NAMESPACE = "retail"
SANDBOX_ID = "5f" + "0123456789abcdef" * 3 + "89abcdef01234f"
SANDBOX_UID = "3c2b7a1e-9d4f-4a57-b1e3-6f0a2c9d8e71"
CPATH = "/run/kata-containers/shared/containers"
SFPREFIX = "/run/kata-containers/shared/containers/"
BUNDLE_PREFIX = "/run/containerd/io.containerd.runtime.v2.task/k8s.io/"

DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]

MASKED = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]
READONLY = [
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
]

SERVICE_ENV = [
    "KUBERNETES_SERVICE_HOST=10.0.0.1",
    "KUBERNETES_SERVICE_PORT=443",
    "KUBERNETES_SERVICE_PORT_HTTPS=443",
    "KUBERNETES_PORT=tcp://10.0.0.1:443",
    "KUBERNETES_PORT_443_TCP=tcp://10.0.0.1:443",
    "KUBERNETES_PORT_443_TCP_PROTO=tcp",
    "KUBERNETES_PORT_443_TCP_PORT=443",
    "KUBERNETES_PORT_443_TCP_ADDR=10.0.0.1",
    "CATALOG_SERVICE_HOST=10.0.14.7",
    "CATALOG_SERVICE_PORT=8080",
    "CATALOG_PORT=tcp://10.0.14.7:8080",
    "CATALOG_PORT_8080_TCP=tcp://10.0.14.7:8080",
    "CATALOG_PORT_8080_TCP_PROTO=tcp",
    "CATALOG_PORT_8080_TCP_PORT=8080",
    "CATALOG_PORT_8080_TCP_ADDR=10.0.14.7",
]


def container_id(n):
    return "%064x" % (0xC0FFEE0000 + n * 7919)


def common_mounts():
    return [
        {"destination": "/proc", "source": "proc", "type_": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "source": "tmpfs", "type_": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "source": "devpts", "type_": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/mqueue", "source": "mqueue", "type_": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "source": "sysfs", "type_": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "source": "cgroup", "type_": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]


def app_mounts(policy, bundle, suffix):
    mounts = common_mounts()
    for name in ["hosts", "termination-log", "hostname", "resolv.conf"]:
        dest = "/dev/termination-log" if name == "termination-log" else "/etc/" + name
        if policy:
            src = "^$(sfprefix)$(bundle-id)-[a-z0-9]{16}-" + name + "$"
        else:
            src = SFPREFIX + bundle + "-" + suffix + "-" + name
        mounts.append({"destination": dest, "source": src, "type_": "bind",
                       "options": ["rbind", "rprivate", "rw"]})
    if policy:
        shm = "^/run/kata-containers/sandbox/shm$"
        sa = "^$(sfprefix)$(bundle-id)-[a-z0-9]{16}-serviceaccount$"
    else:
        shm = "/run/kata-containers/sandbox/shm"
        sa = SFPREFIX + bundle + "-" + suffix + "-serviceaccount"
    mounts.append({"destination": "/dev/shm", "source": shm, "type_": "bind",
                   "options": ["rbind"]})
    mounts.append({"destination": "/var/run/secrets/kubernetes.io/serviceaccount",
                   "source": sa, "type_": "bind", "options": ["rbind", "rprivate", "ro"]})
    return mounts


def process(policy, args, env, uid=0, cwd="/", caps=None, terminal=False):
    caps = caps if caps is not None else DEFAULT_CAPS
    p = {
        "Terminal": terminal,
        "User": {"UID": uid, "GID": uid, "AdditionalGids": [uid] if uid else [0, 1, 2, 3, 4, 6, 10],
                 "Username": ""},
        "Args": args,
        "Env": env,
        "Cwd": cwd,
        "Capabilities": {
            "Bounding": caps, "Effective": caps, "Inheritable": [],
            "Permitted": caps, "Ambient": [],
        },
        "Rlimits": [{"Type": "RLIMIT_NOFILE", "Hard": 1048576, "Soft": 1048576}],
        "NoNewPrivileges": False,
    }
    if not policy:
        p.update({"ConsoleSize": None, "ApparmorProfile": "", "OOMScoreAdj": 1000,
                  "SelinuxLabel": ""})
        order = ["Terminal", "ConsoleSize", "User", "Args", "Env", "Cwd", "Capabilities",
                 "Rlimits", "NoNewPrivileges", "ApparmorProfile", "OOMScoreAdj", "SelinuxLabel"]
        p = {k: p[k] for k in order}
    return p


def linux(policy, network_path):
    ns = [{"Type": t, "Path": ""} for t in ["ipc", "uts", "mount"]]
    ns.append({"Type": "network", "Path": "" if policy else network_path})
    l = {
        "Namespaces": ns,
        "MaskedPaths": MASKED,
        "ReadonlyPaths": READONLY,
        "Sysctl": {} if not policy else {"net.ipv4.ip_unprivileged_port_start": "0",
                                          "net.ipv4.ping_group_range": "0 2147483647"},
        "Seccomp": None,
    }
    if not policy:
        l = {
            "UIDMappings": [], "GIDMappings": [], "Sysctl": {"net.ipv4.ip_unprivileged_port_start": "0"},
            "Resources": {
                "Devices": [], "Memory": {"Limit": 536870912, "Reservation": 0, "Swap": 0,
                                          "Kernel": 0, "KernelTCP": 0, "Swappiness": 0,
                                          "DisableOOMKiller": False},
                "CPU": {"Shares": 512, "Quota": 50000, "Period": 100000, "RealtimeRuntime": 0,
                        "RealtimePeriod": 0, "Cpus": "", "Mems": ""},
                "Pids": None, "BlockIO": None, "HugepageLimits": [], "Network": None,
            },
            "CgroupsPath": "kubepods-burstable-pod3c2b7a1e.slice:cri-containerd:x",
            "Namespaces": ns, "Devices": [], "Seccomp": None, "RootfsPropagation": "",
            "MaskedPaths": MASKED, "ReadonlyPaths": READONLY, "MountLabel": "", "IntelRdt": None,
        }
    return l


APPS = [
    {
        "name": "web",
        "image": "registry.example.com/shop/frontend:2.14.3",
        "args": ["/usr/sbin/nginx", "-g", "daemon off;"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "NGINX_VERSION=1.27.2", "NJS_VERSION=0.8.7", "PKG_RELEASE=1~bookworm",
                "HOSTNAME=$(sandbox-name)", "POD_IP=$(pod-ip)", "NODE_NAME=$(node-name)",
                "UPSTREAM=catalog.retail.svc.cluster.local:8080",
                "^CACHE_TTL_SECONDS=[0-9]{1,5}$"],
        "exec": [["/usr/sbin/nginx", "-s", "reload"], ["cat", "/etc/nginx/nginx.conf"],
                 ["/bin/sh", "-c", "curl -fsS http://127.0.0.1/healthz"]],
        "uid": 101,
    },
    {
        "name": "cache",
        "image": "registry.example.com/shop/redis:7.4.1",
        "args": ["redis-server", "--save", "", "--appendonly", "no", "--maxmemory", "256mb"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "GOSU_VERSION=1.17", "REDIS_VERSION=7.4.1",
                "REDIS_DOWNLOAD_SHA=bc34b878eb89421bbfca6fa78752343bf37af312a09eb0fae47c9575977dfaa2",
                "HOSTNAME=$(sandbox-name)"],
        "exec": [["redis-cli", "ping"], ["redis-cli", "info", "memory"]],
        "uid": 999,
    },
    {
        "name": "worker",
        "image": "registry.example.com/shop/worker:5.0.0",
        "args": ["python3", "-m", "worker", "--queue", "orders", "--concurrency", "4"],
        "env": ["PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8", "GPG_KEY=7169605F62C751356D054A26A821E680E5FA6305",
                "PYTHON_VERSION=3.12.7", "PYTHON_SHA256=24887b92e2afd4a2ac602419ad4b596372f67ac9b077190f459aba390faf5550",
                "HOSTNAME=$(sandbox-name)", "POD_UID=$(pod-uid)", "HOST_IP=$(host-ip)",
                "QUEUE_URL=amqp://orders.retail.svc.cluster.local:5672",
                "^WORKER_ID=[a-z0-9-]{1,40}$"],
        "exec": [["python3", "-m", "worker.health"]],
        "uid": 1000,
    },
    {
        "name": "log-shipper",
        "image": "registry.example.com/observability/shipper:1.9.0",
        "args": ["/bin/shipper", "--config", "/etc/shipper/shipper.yaml", "--node", "$(node-name)"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "SHIPPER_LOG_LEVEL=info", "HOSTNAME=$(sandbox-name)", "NODE_NAME=$(node-name)"],
        "exec": [],
        "uid": 0,
    },
]


def storage(policy, kind, bundle=None, image=None):
    if kind == "image":
        return {
            "driver": "image_guest_pull",
            "driver_options": [],
            "source": image,
            "fstype": "overlay",
            "options": [] if policy else ["image_guest_pull={\"metadata\":{}}"],
            "mount_point": "^$(cpath)/$(bundle-id)$" if policy else CPATH + "/" + bundle,
            "fs_group": None,
            "shared": False,
        }
    return {
        "driver": "local",
        "driver_options": [],
        "source": "local",
        "fstype": "local",
        "options": ["mode=0777"],
        "mount_point": ("^$(cpath)/$(sandbox-id)/rootfs/local/data$" if policy
                        else CPATH + "/" + SANDBOX_ID + "/rootfs/local/data"),
        "fs_group": None,
        "shared": False,
    }


def annotations(policy, kind, bundle, name=None, image=None):
    a = {
        "io.kubernetes.cri.container-type": kind,
        "io.katacontainers.pkg.oci.container_type": "pod_sandbox" if kind == "sandbox" else "pod_container",
        "io.kubernetes.cri.sandbox-namespace": NAMESPACE,
        "io.kubernetes.cri.sandbox-id": "^[a-z0-9]{64}$" if policy else SANDBOX_ID,
    }
    if not policy:
        a["io.kubernetes.cri.sandbox-name"] = SANDBOX_NAME
        a["io.katacontainers.pkg.oci.bundle_path"] = BUNDLE_PREFIX + bundle
        a["io.kubernetes.cri.sandbox-uid"] = SANDBOX_UID
    if kind == "sandbox":
        a["io.kubernetes.cri.sandbox-log-directory"] = (
            "^/var/log/pods/$(sandbox-namespace)_$(sandbox-name)_[a-z0-9-]+$" if policy
            else "/var/log/pods/%s_%s_%s" % (NAMESPACE, SANDBOX_NAME, SANDBOX_UID))
    else:
        a["io.kubernetes.cri.container-name"] = name
        a["io.kubernetes.cri.image-name"] = image
    return a


def policy_containers():
    out = [{
        "name": "pause",
        "OCI": {
            "Version": "1.1.0",
            "Process": process(True, ["/pause"], ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], uid=65535),
            "Root": {"Path": "$(cpath)/$(bundle-id)/rootfs", "Readonly": True},
            "Hostname": "$(sandbox-name)",
            "Mounts": common_mounts() + [{"destination": "/dev/shm", "source": "^/run/kata-containers/sandbox/shm$",
                                          "type_": "bind", "options": ["rbind"]}],
            "Annotations": annotations(True, "sandbox", None),
            "Linux": linux(True, None),
        },
        "storages": [storage(True, "image", image="registry.k8s.io/pause:3.10")],
        "devices": [],
        "exec_commands": [],
    }]
    for app in APPS:
        env = app["env"] + SERVICE_ENV
        out.append({
            "name": app["name"],
            "OCI": {
                "Version": "1.1.0",
                "Process": process(True, app["args"], env, uid=app["uid"]),
                "Root": {"Path": "$(cpath)/$(bundle-id)/rootfs", "Readonly": False},
                "Hostname": "",
                "Mounts": app_mounts(True, None, None),
                "Annotations": annotations(True, "container", None, app["name"], app["image"]),
                "Linux": linux(True, None),
            },
            "storages": [storage(True, "image", image=app["image"]), storage(True, "local")],
            "devices": [],
            "exec_commands": app["exec"],
        })
    return out


def policy_data():
    return {
        "containers": policy_containers(),
        "common": {
            "cpath": CPATH,
            "sfprefix": SFPREFIX,
            "bundle_path_prefix": BUNDLE_PREFIX,
            "default_namespace_regex": "^[a-z0-9-]{1,63}$",
            "default_caps": DEFAULT_CAPS,
            "confidential": True,
            "ephemeral_prefix": "/run/kata-containers/sandbox/ephemeral/",
        },
        "sandbox": {
            "pidns": False,
            "hostname_regex": "^" + SANDBOX_NAME.replace(".", "\\.") + "$",
            "storages": [{
                "driver": "ephemeral", "fstype": "tmpfs", "options": ["size=67108864"],
                "mount_point": "^/run/kata-containers/sandbox/shm$", "source": "^shm$",
            }],
        },
        "network": {
            "interface_names": ["eth0", "lo"],
            "max_mtu": 9000,
            "forbidden_destinations": ["169.254.169.254/32"],
        },
        "request_defaults": {
            "CopyFileRequest": ["^$(sfprefix)[a-z0-9]{64}-[a-z0-9]{16}-[a-z.-]+$",
                                "^$(sfprefix)watchable/[a-z0-9]{64}-[a-z0-9]{16}-[a-z.-]+/.+$"],
            "ExecProcessRequest": {"regex": ["^/bin/cat /proc/(meminfo|loadavg)$"]},
            "ReadStreamRequest": True,
            "WriteStreamRequest": False,
            "SetPolicyRequest": False,
            "AddSwapRequest": False,
            "MemHotplugByProbeRequest": False,
        },
    }


def oci_request(kind, bundle, app=None):
    if kind == "sandbox":
        proc = process(False, ["/pause"], ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], uid=65535)
        mounts = common_mounts() + [{"destination": "/dev/shm", "source": "/run/kata-containers/sandbox/shm",
                                     "type_": "bind", "options": ["rbind"]}]
        ann = annotations(False, "sandbox", bundle)
        hostname = SANDBOX_NAME
        readonly = True
    else:
        env = []
        for e in app["env"] + SERVICE_ENV:
            e = e.replace("$(sandbox-name)", SANDBOX_NAME).replace("$(pod-ip)", "10.244.3.17")
            e = e.replace("$(node-name)", "aks-pool1-38412-vmss000002").replace("$(pod-uid)", SANDBOX_UID)
            e = e.replace("$(host-ip)", "10.224.0.5")
            if e.startswith("^CACHE_TTL"):
                e = "CACHE_TTL_SECONDS=300"
            if e.startswith("^WORKER_ID"):
                e = "WORKER_ID=orders-worker-1"
            env.append(e)
        args = [a.replace("$(node-name)", "aks-pool1-38412-vmss000002") for a in app["args"]]
        proc = process(False, args, env, uid=app["uid"])
        mounts = app_mounts(False, bundle, "9f3c2a1b7d6e5f40")
        ann = annotations(False, "container", bundle, app["name"], app["image"])
        hostname = ""
        readonly = False
    return {
        "Version": "1.1.0",
        "Process": proc,
        "Root": {"Path": CPATH + "/" + bundle + "/rootfs", "Readonly": readonly},
        "Hostname": hostname,
        "Mounts": mounts,
        "Hooks": None,
        "Annotations": ann,
        "Linux": linux(False, "/var/run/netns/cni-6a4e1f2b-93c1-8d0e-5b7a-2c4f9e1d3a60"),
        "Solaris": None,
        "Windows": None,
    }


def create_container(n, kind, app=None):
    bundle = SANDBOX_ID if kind == "sandbox" else container_id(n)
    if kind == "sandbox":
        storages = [storage(False, "image", bundle, "registry.k8s.io/pause:3.10")]
    else:
        storages = [storage(False, "image", bundle, app["image"]), storage(False, "local")]
    return {
        "container_id": bundle,
        "exec_id": bundle,
        "string_user": None,
        "devices": [],
        "storages": storages,
        "OCI": oci_request(kind, bundle, app),
        "sandbox_pidns": False,
        "shared_mounts": [],
        "stdin_port": 0,
        "stdout_port": 0,
        "stderr_port": 0,
    }


def exec_process(app, args):
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "KUBERNETES_SERVICE_HOST=10.0.0.1", "KUBERNETES_SERVICE_PORT=443"]
    return {
        "container_id": container_id(1),
        "exec_id": "4d3c2b1a-exec",
        "string_user": None,
        "process": process(False, args, env, uid=app["uid"]),
        "stdin_port": 0,
        "stdout_port": 0,
        "stderr_port": 0,
    }


def main():
    rules = open(os.path.join(HERE, "rules.rego")).read()
    data = json.dumps(policy_data(), indent=4)
    with open(os.path.join(HERE, "policy.rego"), "w") as f:
        f.write(rules)
        f.write("\n######################################################################\n")
        f.write("# Generated by gen_policy.py: the pod's containers and settings.\n\n")
        f.write("policy_data := " + data + "\n")

    req_dir = os.path.join(HERE, "requests")
    os.makedirs(req_dir, exist_ok=True)
    requests = {
        "create_container_pause.json": create_container(0, "sandbox"),
        "create_container_web.json": create_container(1, "container", APPS[0]),
        "create_container_worker.json": create_container(3, "container", APPS[2]),
        "exec_process_allowed.json": exec_process(APPS[0], ["/usr/sbin/nginx", "-s", "reload"]),
        "exec_process_denied.json": exec_process(APPS[0], ["/bin/sh", "-c", "cat /etc/shadow"]),
        "copy_file_symlink_escape.json": {
            "path": SFPREFIX + container_id(1) + "-9f3c2a1b7d6e5f40-resolv.conf",
            "file_size": 16, "file_mode": 0o120777, "dir_mode": 0o750, "uid": 0, "gid": 0,
            "offset": 0, "data": list(b"../../etc/shadow"),
        },
        "copy_file_regular.json": {
            "path": SFPREFIX + container_id(1) + "-9f3c2a1b7d6e5f40-resolv.conf",
            "file_size": 25, "file_mode": 0o100644, "dir_mode": 0o750, "uid": 0, "gid": 0,
            "offset": 0, "data": list(b"nameserver 10.0.0.10\n\n\n\n"),
        },
        "start_container.json": {"container_id": container_id(1)},
        "read_stream.json": {"container_id": container_id(1), "exec_id": "", "len": 32768},
    }
    # A container from another sandbox: wrong sandbox name once the pause container fixed it.
    other = create_container(2, "container", APPS[1])
    other["OCI"]["Annotations"]["io.kubernetes.cri.sandbox-name"] = "intruder-5c4d"
    requests["create_container_other_sandbox.json"] = other
    for name, req in requests.items():
        with open(os.path.join(req_dir, name), "w") as f:
            json.dump(req, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()

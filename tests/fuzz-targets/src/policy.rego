# The agent policy the fuzz targets run under: every class of decision the gate
# precompiles or evaluates. (Stateless: the gate and the reference path must stay in step
# across millions of executions in one process; state updates are proven equivalent by
# policy/tests/equivalence.rs.)
package agent_policy

# Constant allow.
default StartContainerRequest := true
default WaitProcessRequest := true
default StatsContainerRequest := true
default GuestDetailsRequest := true
default ReadStreamRequest := true
default CreateSandboxRequest := true
default ListInterfacesRequest := true

# Constant deny: false, and (for every request not named here) no rule at all.
default RemoveContainerRequest := false
default SetPolicyRequest := false

# Evaluated on the request.
default ExecProcessRequest := false

ExecProcessRequest if {
    input.process.Args == ["/bin/true"]
    input.container_id != ""
}

default SignalProcessRequest := false

SignalProcessRequest if input.signal == 15

default CopyFileRequest := false

CopyFileRequest if {
    startswith(input.path, "/run/kata-containers/shared/containers/")
    not contains(input.path, "..")
    input.file_type != "Symlink"
}

CreateContainerRequest := {"allowed": true, "ops": []} if {
    input.OCI.Process.Args[0] == "/pause"
    count(input.OCI.Mounts) < 4
}

default UpdateRoutesRequest := false

UpdateRoutesRequest if {
    every r in input.routes.Routes {
        r.device == "eth0"
    }
}

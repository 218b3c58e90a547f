"""Drives gantry with Ganeti's own RAPI client (Debian's python3-ganeti-rapi).

Usage: official_client.py HOST PORT USER PASSWORD
Every step asserts what a Ganeti cluster would answer; exits non-zero on the first difference.
"""
import sys

from ganeti.rapi import client

host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
# No curl_config_fn: the official client then does not verify the self-signed certificate.
rapi = client.GanetiRapiClient(host, port=port, username=user, password=password)
NAME = "official1.example.com"


def finished_ok(job_id, what):
    assert isinstance(job_id, int), (what, job_id)
    done = rapi.WaitForJobCompletion(job_id, period=1, retries=60)
    status = rapi.GetJobStatus(job_id)
    assert done, (what, status["status"], status["opresult"])
    assert status["status"] == "success", (what, status)
    return status


assert rapi.GetVersion() == 2
features = rapi.GetFeatures()
for needed in (client._INST_CREATE_REQV1, client._INST_REINSTALL_REQV1,
               client._NODE_MIGRATE_REQV1, client._NODE_EVAC_RES1):
    assert needed in features, (needed, features)
info = rapi.GetInfo()
assert info["name"] and "default_hypervisor" in info, info
nodes = rapi.GetNodes(bulk=True)
assert len(nodes) >= 2 and all("mfree" in n for n in nodes), nodes
assert "debootstrap+default" in rapi.GetOperatingSystems()
# Non-bulk lists of groups and networks are keyed "name" upstream (KeyError otherwise).
assert "default" in rapi.GetGroups(), rapi.GetGroups()
assert rapi.GetNetworks() == [], rapi.GetNetworks()
finished_ok(rapi.CreateNetwork("official-net", "10.9.0.0/24"), "network add")
assert rapi.GetNetworks() == ["official-net"], rapi.GetNetworks()
assert rapi.GetNetwork("official-net")["free_count"] == 254
finished_ok(rapi.DeleteNetwork("official-net"), "network remove")

create = dict(mode="create", name=NAME, disk_template="drbd",
              disks=[{"size": 1024}], nics=[{}], os="debootstrap+default",
              beparams={"memory": 256})
dry = finished_ok(rapi.CreateInstance(dry_run=True, **create), "dry-run create")
assert len(dry["opresult"][0]) == 2, dry["opresult"]
assert NAME not in rapi.GetInstances(), "a dry run created nothing"

finished_ok(rapi.CreateInstance(**create), "create")
inst = rapi.GetInstance(NAME)
assert inst["status"] == "running" and inst["disk_template"] == "drbd", inst
assert inst["beparams"]["memory"] == 256, inst["beparams"]
primary = inst["pnode"]
# Every field Ganeti 3.0's rlib2 returns for an instance (I_FIELDS), with its type.
I_FIELDS = {"name": str, "admin_state": str, "os": str, "pnode": str, "snodes": list,
            "disk_template": str, "nic.ips": list, "nic.macs": list, "nic.modes": list,
            "nic.uuids": list, "nic.names": list, "nic.links": list, "nic.networks": list,
            "nic.networks.names": list, "nic.bridges": list, "network_port": type(None),
            "disk.sizes": list, "disk.spindles": list, "disk_usage": int, "disk.uuids": list,
            "disk.names": list, "beparams": dict, "hvparams": dict, "oper_state": bool,
            "oper_ram": int, "oper_vcpus": int, "status": str, "custom_hvparams": dict,
            "custom_beparams": dict, "custom_nicparams": list, "ctime": float, "mtime": float,
            "uuid": str, "serial_no": int, "tags": list}
for field, kind in I_FIELDS.items():
    assert isinstance(inst.get(field, KeyError), kind), (field, inst.get(field, KeyError))
assert set(inst) == set(I_FIELDS), set(inst) ^ set(I_FIELDS)
assert len(inst["nic.uuids"]) == len(inst["nic.macs"]) == 1, inst
# Every query resource lists its fields, and a query of all instance fields answers a cell
# [status, value] for each.
for kind in ("instance", "node", "group", "network", "job", "export", "lock", "filter"):
    fields = rapi.QueryFields(kind)["fields"]
    assert fields and all(set(f) == {"name", "title", "kind", "doc"} for f in fields), kind
    assert all(f["kind"] != "unknown" for f in fields), kind
everything = [f["name"] for f in rapi.QueryFields("instance")["fields"]]
assert len(everything) == 292, len(everything)
rows = rapi.Query("instance", everything, qfilter=["=", "name", NAME])["data"]
assert len(rows) == 1 and len(rows[0]) == 292, rows
assert all(status in (0, 2, 3) for status, _ in rows[0]), rows[0]

# WaitForJobChange is what `gnt-*` style tools poll with.
job = rapi.RebootInstance(NAME, reboot_type="hard")
change = rapi.WaitForJobChange(job, ["status"], None, None)
assert change is None or "job_info" in change, change
finished_ok(job, "reboot")

finished_ok(rapi.MigrateInstance(NAME, mode="live"), "migrate")
assert rapi.GetInstance(NAME)["pnode"] != primary, "migration moved the primary"

finished_ok(rapi.AddInstanceTags(NAME, ["web", "prod"]), "tags")
assert sorted(rapi.GetInstanceTags(NAME)) == ["prod", "web"]

info_job = rapi.GetInstanceInfo(NAME)
info = finished_ok(info_job, "instance info")["opresult"][0]
assert info[NAME]["run_state"] == "up", info

# The legacy query-string interface the official client uses for replace-disks.
finished_ok(rapi.ReplaceInstanceDisks(NAME, mode="replace_auto"), "replace disks")
finished_ok(rapi.GrowInstanceDisk(NAME, 0, 512, wait_for_sync=False), "grow disk")
assert rapi.GetInstance(NAME)["disk.sizes"] == [1536], rapi.GetInstance(NAME)["disk.sizes"]
finished_ok(rapi.ModifyInstance(NAME, beparams={"memory": 512}), "modify")
assert rapi.GetInstance(NAME)["beparams"]["memory"] == 512
finished_ok(rapi.ModifyGroup("default", custom_ndparams={"spindle_count": 3}), "modify group")
assert rapi.GetGroup("default")["ndparams"]["spindle_count"] == 3

finished_ok(rapi.ShutdownInstance(NAME, timeout=10), "shutdown")
assert rapi.GetInstance(NAME)["oper_state"] is False
finished_ok(rapi.DeleteInstance(NAME), "remove")
assert NAME not in rapi.GetInstances()

try:
    rapi.GetInstance(NAME)
    raise AssertionError("a removed instance is still readable")
except client.GanetiApiError as err:
    assert err.code == 404, err.code

jobs = rapi.GetJobs(bulk=True)
assert all(isinstance(j["id"], int) for j in jobs), jobs
print("official client: all steps passed")

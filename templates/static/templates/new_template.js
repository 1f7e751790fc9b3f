// New Template form: offer the chosen host's shut-off VMs (GET /api/hosts/<id>/vms/), with their
// disks and sizes, as suggestions for the VM field.
document.addEventListener("DOMContentLoaded", function () {
  const host = document.getElementById("id_host");
  const vm = document.getElementById("id_vm_name");
  if (!host || !vm) return;
  const list = document.createElement("datalist");
  list.id = "vmseal-vms";
  vm.after(list);
  const note = document.createElement("div");
  note.className = "help";
  note.id = "vmseal-vms-note";
  list.after(note);
  const gib = (n) => n == null ? "?" : (n / 2 ** 30).toFixed(2) + " GiB";
  async function load() {
    list.innerHTML = "";
    note.textContent = "";
    if (!host.value) return;
    note.textContent = "reading the host's VMs…";
    try {
      const r = await fetch(`/api/hosts/${host.value}/vms/`, {credentials: "same-origin"});
      const vms = await r.json();
      if (!r.ok) { note.textContent = vms.detail || "the host did not answer"; return; }
      for (const v of vms) {
        const o = document.createElement("option");
        o.value = v.name;
        o.label = `${v.name}: ${v.disks.length} disk(s), ${v.disks.map(d => d.target + " " + gib(d.size)).join(", ")}`;
        list.appendChild(o);
      }
      note.textContent = vms.length ? `${vms.length} shut-off VM(s): ${vms.map(v => v.name).join(", ")}`
                                    : "no shut-off VM on this host";
    } catch (e) { note.textContent = "the host did not answer"; }
  }
  host.addEventListener("change", load);
  load();
});

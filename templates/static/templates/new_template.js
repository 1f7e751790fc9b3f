// New Template form: offer the chosen host's shut-off VMs (GET /api/hosts/<id>/vms/), with their
// disks and sizes, as suggestions for the VM field; VMs whose disks cannot be copied are not offered,
// and the note under the field says why.
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
      const usable = vms.filter(v => !v.problems.length), unusable = vms.filter(v => v.problems.length);
      for (const v of usable) {
        const o = document.createElement("option");
        o.value = v.name;
        o.label = `${v.name}: ${v.disks.length} disk(s), ${v.disks.map(d => d.target + " " + gib(d.size)).join(", ")}`;
        list.appendChild(o);
      }
      // textContent, never HTML: names and reasons come from the host
      note.textContent = usable.length ? `${usable.length} shut-off VM(s): ${usable.map(v => v.name).join(", ")}`
                                       : "no usable shut-off VM on this host";
      for (const v of unusable) {
        const why = document.createElement("div");
        why.className = "vmseal-vm-unusable";
        why.textContent = `${v.name} cannot be used: ${v.problems.join("; ")}`;
        note.appendChild(why);
      }
    } catch (e) { note.textContent = "the host did not answer"; }
  }
  host.addEventListener("change", load);
  load();
});

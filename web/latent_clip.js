// Shows the text a Latent-CLIP node returns (ui.PreviewText: scores, tables, reports) on the node.
import { app } from "../../scripts/app.js";

const WIDGET = "latent_clip_report";

app.registerExtension({
    name: "latent_clip.ShowReport",
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (!nodeData.name.startsWith("LatentCLIP")) return;
        const onExecuted = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (message) {
            onExecuted?.apply(this, arguments);
            const text = (message?.text ?? []).join("\n");
            if (!text) return;
            let widget = this.widgets?.find((w) => w.name === WIDGET);
            if (!widget) {
                const area = document.createElement("textarea");
                area.readOnly = true;
                area.className = "comfy-multiline-input";
                area.style.cssText = "font-family: monospace; font-size: 10px; white-space: pre; opacity: 0.9;";
                widget = this.addDOMWidget(WIDGET, "latent_clip_text", area, {
                    serialize: false, getValue: () => area.value, setValue: (v) => { area.value = v; },
                });
                widget.element = area;
            }
            widget.element.value = text;
            const rows = text.split("\n").length;
            this.setSize([Math.max(this.size[0], 380), Math.max(this.computeSize()[1], this.size[1]) + 0]);
            widget.element.style.minHeight = `${Math.min(14 * rows + 12, 220)}px`;
            app.graph.setDirtyCanvas(true, true);
        };
    },
});

// The safety filter's seed only picks the replacement noise: start it at "fixed" (the frontend's
// default for a seed is "randomize", which would re-run the filter and everything after it on every
// queue). A saved workflow's own choice is applied after this and wins.
const FIXED_SEED_NODES = new Set(["LatentCLIPSafetyFilter"]);

app.registerExtension({
    name: "latent_clip.FixedSeed",
    nodeCreated(node) {
        if (!FIXED_SEED_NODES.has(node.comfyClass)) return;
        const seed = node.widgets?.find((w) => w.name === "seed");
        for (const control of seed?.linkedWidgets ?? []) control.value = "fixed";
    },
});

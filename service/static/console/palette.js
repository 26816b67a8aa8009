// The anomaly map's colours: the service's own palette (console/colorbar.png, 256 x 1), so that maps drawn
// here look exactly like the service's PNG maps. Scale: 0 at the palette's start, the bank's pixel threshold
// at mid-scale, twice the threshold and above saturated.

let palette = null;

/** (256 * 3) RGB bytes of the palette. */
export async function loadPalette() {
  if (palette) return palette;
  const img = new Image();
  img.src = "console/colorbar.png";
  await img.decode();
  const canvas = document.createElement("canvas");
  canvas.width = 256;
  canvas.height = 1;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const rgba = ctx.getImageData(0, 0, 256, 1).data;
  palette = new Uint8Array(256 * 3);
  for (let i = 0; i < 256; i++) palette.set(rgba.subarray(4 * i, 4 * i + 3), 3 * i);
  return palette;
}

/** The palette level (0..255) of a map value: as patchbank.regions.heatmap_png. */
export function level(value, threshold) {
  const scale = threshold > 0 ? 255 / (2 * threshold) : 0;
  const k = Math.floor(value * scale + 0.5);
  return Number.isFinite(k) ? Math.min(255, Math.max(0, k)) : 0;
}

/** Draw a (height, width) map of values into a canvas of that size. */
export function drawMap(canvas, values, width, height, threshold, colours) {
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(width, height);
  for (let i = 0; i < values.length; i++) {
    const k = 3 * level(values[i], threshold);
    image.data[4 * i] = colours[k];
    image.data[4 * i + 1] = colours[k + 1];
    image.data[4 * i + 2] = colours[k + 2];
    image.data[4 * i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

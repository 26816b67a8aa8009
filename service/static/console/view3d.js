// The 3D view of a part: its point cloud (from POST /console/points), each point coloured by the anomaly
// map at its pixel, turned with the mouse. three.js is loaded only when a part is shown; without WebGL the
// view says so and the rest of the page works.

import { level } from "./palette.js";

let THREE = null;
let OrbitControls = null;
let view = null; // {renderer, scene, camera, controls, points, container}

async function ensure(container, note) {
  if (view) return true;
  try {
    THREE = await import("three");
    ({ OrbitControls } = await import("three/addons/controls/OrbitControls.js"));
    const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
    renderer.setPixelRatio(window.devicePixelRatio || 1);
    container.replaceChildren(renderer.domElement);
    const scene = new THREE.Scene();
    scene.background = new THREE.Color(0x1b1e23);
    const camera = new THREE.PerspectiveCamera(40, 1, 0.001, 100);
    const controls = new OrbitControls(camera, renderer.domElement);
    view = { renderer, scene, camera, controls, points: null, container };
    controls.addEventListener("change", render);
    new ResizeObserver(resize).observe(container);
    resize();
    return true;
  } catch (err) {
    note.textContent = `The 3D view needs WebGL, which this browser does not offer (${err.message}).`;
    return false;
  }
}

function resize() {
  const { renderer, camera, container } = view;
  const width = container.clientWidth || 400;
  const height = container.clientHeight || 300;
  renderer.setSize(width, height, false);
  camera.aspect = width / height;
  camera.updateProjectionMatrix();
  render();
}

function render() {
  if (view) view.renderer.render(view.scene, view.camera);
}

/**
 * Show a cloud: {width, height, count, points: Float32Array (count * 3, metres), pixels: Uint32Array};
 * map: {values: Float32Array (height * width), width, height, threshold, palette} or null (grey points).
 */
export async function showCloud(container, note, cloud, map) {
  if (!(await ensure(container, note))) return;
  const { scene, camera, controls } = view;
  if (view.points) {
    scene.remove(view.points);
    view.points.geometry.dispose();
    view.points.material.dispose();
  }
  const n = cloud.count;
  const p = cloud.points;
  const centre = [0, 0, 0];
  for (let i = 0; i < n; i++) for (let a = 0; a < 3; a++) centre[a] += p[3 * i + a] / n;
  // as the sensor sees the part: x right, y up, the camera on +z (the cloud's y points down, z away)
  const positions = new Float32Array(3 * n);
  let radius = 1e-6;
  for (let i = 0; i < n; i++) {
    const x = p[3 * i] - centre[0];
    const y = -(p[3 * i + 1] - centre[1]);
    const z = -(p[3 * i + 2] - centre[2]);
    positions.set([x, y, z], 3 * i);
    radius = Math.max(radius, Math.hypot(x, y, z));
  }
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute("position", new THREE.BufferAttribute(positions, 3));
  geometry.setAttribute("color", new THREE.BufferAttribute(colours(cloud, map), 3));
  const material = new THREE.PointsMaterial({ size: 2.5, sizeAttenuation: false, vertexColors: true });
  view.points = new THREE.Points(geometry, material);
  scene.add(view.points);
  camera.near = radius / 100;
  camera.far = radius * 100;
  camera.position.set(0, 0, radius * 2.8);
  camera.updateProjectionMatrix();
  controls.target.set(0, 0, 0);
  controls.update();
  render();
}

function colours(cloud, map) {
  const out = new Float32Array(3 * cloud.count);
  if (!map) return out.fill(0.55);
  const table = new Float32Array(256 * 3); // the palette in three.js's linear working colour space
  const c = new THREE.Color();
  for (let k = 0; k < 256; k++) {
    c.setRGB(map.palette[3 * k] / 255, map.palette[3 * k + 1] / 255, map.palette[3 * k + 2] / 255, THREE.SRGBColorSpace);
    table.set([c.r, c.g, c.b], 3 * k);
  }
  const sx = map.width / cloud.width;
  const sy = map.height / cloud.height;
  for (let i = 0; i < cloud.count; i++) {
    const pixel = cloud.pixels[i];
    const col = pixel % cloud.width;
    const row = Math.floor(pixel / cloud.width);
    const mx = Math.min(map.width - 1, Math.floor((col + 0.5) * sx));
    const my = Math.min(map.height - 1, Math.floor((row + 0.5) * sy));
    const k = 3 * level(map.values[my * map.width + mx], map.threshold);
    out[3 * i] = table[k];
    out[3 * i + 1] = table[k + 1];
    out[3 * i + 2] = table[k + 2];
  }
  return out;
}

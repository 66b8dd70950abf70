import { loraVitestConfig } from '../../vitest.shared.ts';

export default loraVitestConfig('@lora/serve');
